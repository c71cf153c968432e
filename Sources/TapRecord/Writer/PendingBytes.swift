/// The bytes a `RecordingWriter` has encoded but not yet written, in memory aligned for direct I/O.
///
/// The first pending byte is always at `base`, which is aligned to `alignment`: a whole-block direct write goes
/// straight from here to the disk, with no copy into an aligned block first. Payloads are copied in once, from the
/// connection's buffer.
final class PendingBytes {
    private(set) var base: UnsafeMutableRawPointer
    private(set) var capacity: Int
    /// Bytes pending, from `base`.
    private(set) var count = 0
    let alignment: Int

    init(capacity: Int, alignment: Int) {
        self.alignment = alignment
        self.capacity = capacity
        base = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: alignment)
    }

    deinit { base.deallocate() }

    /// The pending bytes.
    var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }

    /// Appends `raw`, growing (by doubling) when it does not fit.
    func append(_ raw: UnsafeRawBufferPointer) {
        withSink { $0.put(bytes: raw) }
    }

    /// Appends `record`, framed; its payload is copied once, from the connection's buffer.
    func append(_ record: SessionRecord) {
        withSink { record.append(to: &$0) }
    }

    /// Runs `body` on the pending memory as a local value: stores into it need none of the run-time exclusivity
    /// checks that every write to a class's stored property would. The class then adopts the (maybe grown) memory.
    private func withSink(_ body: (inout Sink) -> Void) {
        var sink = Sink(base: base, count: count, capacity: capacity, alignment: alignment)
        body(&sink)
        base = sink.base
        count = sink.count
        capacity = sink.capacity
    }

    /// The pending memory while bytes are appended; grows by doubling into new aligned memory.
    private struct Sink: RecordSink {
        var base: UnsafeMutableRawPointer
        var count: Int
        var capacity: Int
        let alignment: Int

        var position: Int { count }

        mutating func put<T: FixedWidthInteger>(_ value: T) {
            let size = MemoryLayout<T>.size
            if count + size > capacity { grow(to: count + size) }
            (base + count).storeBytes(of: value.bigEndian, as: T.self)
            count += size
        }

        mutating func put(bytes: UnsafeRawBufferPointer) {
            guard let source = bytes.baseAddress, bytes.count > 0 else { return }
            if count + bytes.count > capacity { grow(to: count + bytes.count) }
            (base + count).copyMemory(from: source, byteCount: bytes.count)
            count += bytes.count
        }

        mutating func patch(_ value: UInt32, at index: Int) {
            (base + index).storeBytes(of: value.bigEndian, as: UInt32.self)
        }

        func checksum(from index: Int) -> UInt32 {
            CRC32.update(0, UnsafeRawBufferPointer(start: base + index, count: count - index))
        }

        private mutating func grow(to needed: Int) {
            var grown = capacity
            while grown < needed { grown *= 2 }
            let bigger = UnsafeMutableRawPointer.allocate(byteCount: grown, alignment: alignment)
            bigger.copyMemory(from: base, byteCount: count)
            base.deallocate()
            base = bigger
            capacity = grown
        }
    }

    /// Drops the first `n` bytes; the rest moves to `base`.
    func removeFirst(_ n: Int) {
        precondition(n <= count)
        if n < count { base.copyMemory(from: base + n, byteCount: count - n) }
        count -= n
    }

    func removeAll() { count = 0 }
}
