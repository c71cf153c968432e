import NIOCore

/// Finds gRPC length-prefixed messages (1-byte flag, 4-byte big-endian length) in one direction of a stream,
/// across any split of DATA frames, without copying payloads it is not asked to keep.
public struct GRPCMessageFramer: Sendable {
    /// A message that has been fully seen.
    public struct Message: Sendable {
        public var compressed: Bool
        /// Payload length from the prefix.
        public var length: Int
        /// The first bytes of the payload (up to the capture limit), as slices of the DATA pieces they came in.
        public var pieces: ByteChain
        /// The same bytes in one buffer (copied when the message spanned several pieces); nil when capture was off.
        public var captured: ByteBuffer? { pieces.isEmpty ? nil : pieces.joined }
        /// True when the captured bytes are fewer than `length`.
        public var truncated: Bool { pieces.count < length }
    }

    private var prefix: [UInt8] = []
    private var compressed = false
    private var remaining = 0
    private var length = 0
    private var capture = ByteChain()
    private var captureRemaining = 0
    private var inMessage = false

    /// Messages completed so far.
    public private(set) var messageCount = 0
    /// Payload bytes of completed and partial messages (prefixes excluded).
    public private(set) var payloadBytes = 0
    /// Largest message seen, from its prefix.
    public private(set) var largestMessage = 0

    public init() {}

    /// True when no message is partially received.
    public var isAtMessageBoundary: Bool { !inMessage && prefix.isEmpty }

    /// Consumes one piece of DATA content.
    ///
    /// - Parameters:
    ///   - captureLimit: how many payload bytes of each message starting in this piece to keep (0 = none).
    ///     Asked per message as it starts, so a caller can keep only the first message.
    ///   - onMessage: called once per completed message.
    public mutating func feed(
        _ piece: ByteBuffer,
        captureLimit: (Int) -> Int,
        onMessage: (Message) throws -> Void
    ) rethrows {
        var piece = piece
        while piece.readableBytes > 0 {
            if !inMessage {
                if prefix.isEmpty, piece.readableBytes >= 5 {
                    let flag = piece.readInteger(as: UInt8.self)!
                    let len = piece.readInteger(as: UInt32.self)!
                    start(flag: flag, length: Int(len), captureLimit: captureLimit)
                } else {
                    while prefix.count < 5, let b = piece.readInteger(as: UInt8.self) {
                        prefix.append(b)
                    }
                    guard prefix.count == 5 else { return }
                    let len = Int(prefix[1]) << 24 | Int(prefix[2]) << 16 | Int(prefix[3]) << 8 | Int(prefix[4])
                    let flag = prefix[0]
                    prefix.removeAll(keepingCapacity: true)
                    start(flag: flag, length: len, captureLimit: captureLimit)
                }
                if remaining == 0 {
                    try finish(onMessage)
                    continue
                }
            }
            let n = min(remaining, piece.readableBytes)
            if captureRemaining > 0 {
                // A slice of the forwarded bytes: a message spanning several pieces is not copied here.
                let keep = min(captureRemaining, n)
                capture.append(piece.getSlice(at: piece.readerIndex, length: keep)!)
                captureRemaining -= keep
            }
            piece.moveReaderIndex(forwardBy: n)
            remaining -= n
            payloadBytes += n
            if remaining == 0 {
                try finish(onMessage)
            }
        }
    }

    private mutating func start(flag: UInt8, length: Int, captureLimit: (Int) -> Int) {
        inMessage = true
        compressed = flag & 1 == 1
        self.length = length
        remaining = length
        largestMessage = max(largestMessage, length)
        captureRemaining = min(length, max(0, captureLimit(messageCount)))
        capture = ByteChain()
    }

    private mutating func finish(_ onMessage: (Message) throws -> Void) rethrows {
        inMessage = false
        messageCount += 1
        let message = Message(compressed: compressed, length: length, pieces: capture)
        capture = ByteChain()
        try onMessage(message)
    }
}
