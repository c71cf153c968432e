import NIOCore

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
        guard raw.count > 0 else { return }
        reserve(count + raw.count)
        (base + count).copyMemory(from: raw.baseAddress!, byteCount: raw.count)
        count += raw.count
    }

    /// Appends the readable bytes of `buffer`.
    func append(_ buffer: ByteBuffer) {
        buffer.withUnsafeReadableBytes { append($0) }
    }

    /// Appends `value` in network byte order.
    func appendBigEndian(_ value: UInt32) {
        withUnsafeBytes(of: value.bigEndian) { append($0) }
    }

    /// Drops the first `n` bytes; the rest moves to `base`.
    func removeFirst(_ n: Int) {
        precondition(n <= count)
        if n < count { base.copyMemory(from: base + n, byteCount: count - n) }
        count -= n
    }

    func removeAll() { count = 0 }

    private func reserve(_ needed: Int) {
        guard needed > capacity else { return }
        var grown = capacity
        while grown < needed { grown *= 2 }
        let bigger = UnsafeMutableRawPointer.allocate(byteCount: grown, alignment: alignment)
        bigger.copyMemory(from: base, byteCount: count)
        base.deallocate()
        base = bigger
        capacity = grown
    }
}
