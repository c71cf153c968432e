import NIOCore

/// Bytes kept as slices of the buffers they arrived in, in order.
///
/// A gRPC message that spans several DATA frames is held this way from the decoder to the recording's writer,
/// which copies each piece once into its own memory: the bytes are never first assembled into one buffer.
public struct ByteChain: Sendable {
    /// The pieces, in order; none is empty.
    public private(set) var pieces: [ByteBuffer] = []
    /// Bytes in all pieces.
    public private(set) var count = 0

    public init() {}

    /// One piece (a decoded record's payload, a message that arrived in one DATA piece).
    public init(_ buffer: ByteBuffer) {
        append(buffer)
    }

    public var isEmpty: Bool { count == 0 }

    /// Adds `buffer`'s readable bytes at the end (the buffer is kept, not copied).
    public mutating func append(_ buffer: ByteBuffer) {
        guard buffer.readableBytes > 0 else { return }
        pieces.append(buffer)
        count += buffer.readableBytes
    }

    /// The first `n` bytes (all of them when there are fewer).
    public func prefix(_ n: Int) -> ByteChain {
        guard n < count else { return self }
        var kept = ByteChain()
        for piece in pieces where kept.count < n {
            let take = min(piece.readableBytes, n - kept.count)
            kept.append(piece.getSlice(at: piece.readerIndex, length: take)!)
        }
        return kept
    }

    /// Bytes of memory the pieces keep alive: the whole capacity of each buffer they slice (a buffer shared by
    /// consecutive pieces counted once).
    public var retainedBytes: Int {
        var total = 0
        var last: UnsafeRawPointer?
        for piece in pieces {
            let base = piece.withVeryUnsafeBytes { UnsafeRawPointer($0.baseAddress) }
            if base != last { total += piece.storageCapacity }
            last = base
        }
        return total
    }

    /// The same bytes in memory of their own, exactly their size, so the buffers they were sliced from can go.
    public var compacted: ByteChain { ByteChain(copied()) }

    /// All bytes in one buffer: the piece itself when there is one, else a copy.
    public var joined: ByteBuffer { pieces.count == 1 ? pieces[0] : copied() }

    /// All bytes copied into one new buffer of exactly their size.
    private func copied() -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: count)
        for var piece in pieces { buffer.writeBuffer(&piece) }
        return buffer
    }

    /// Calls `body` with each piece's bytes in order.
    public func forEachPiece(_ body: (UnsafeRawBufferPointer) throws -> Void) rethrows {
        for piece in pieces { try piece.withUnsafeReadableBytes(body) }
    }
}
