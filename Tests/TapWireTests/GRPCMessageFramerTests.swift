import NIOCore
import TapWire
import Testing

/// A completed message, comparable.
private struct Seen: Hashable {
    var compressed: Bool
    var length: Int
    var captured: [UInt8]?
}

/// Feeds `pieces` and returns the messages found (with `captureLimit` per message index) and the framer.
private func frame(
    _ pieces: [[UInt8]], captureLimit: @escaping (Int) -> Int = { _ in 1 << 20 }
) -> ([Seen], GRPCMessageFramer) {
    var framer = GRPCMessageFramer()
    var seen: [Seen] = []
    for piece in pieces {
        framer.feed(ByteBuffer(bytes: piece), captureLimit: captureLimit) { message in
            seen.append(
                Seen(
                    compressed: message.compressed, length: message.length,
                    captured: message.captured.map { Array($0.readableBytesView) }))
        }
    }
    return (seen, framer)
}

@Suite("GRPCMessageFramer")
struct GRPCMessageFramerTests {
    let payload: [UInt8] = Array(0..<40)

    @Test("one message in one piece is reported once with its payload captured")
    func singleMessage() {
        let (seen, framer) = frame([Frames.message(payload)])
        #expect(seen == [Seen(compressed: false, length: 40, captured: payload)])
        #expect(framer.messageCount == 1)
        #expect(framer.payloadBytes == 40)
        #expect(framer.largestMessage == 40)
        #expect(framer.isAtMessageBoundary)
    }

    @Test("several messages in one piece are all reported, in order")
    func severalInOnePiece() {
        let bytes =
            Frames.message([1, 2, 3]) + Frames.message([], compressed: true)
            + Frames.message(Array(repeating: 9, count: 300))
        let (seen, framer) = frame([bytes])
        #expect(seen.map(\.length) == [3, 0, 300])
        #expect(seen.map(\.compressed) == [false, true, false])
        #expect(seen[0].captured == [1, 2, 3])
        #expect(framer.payloadBytes == 303)
        #expect(framer.largestMessage == 300)
    }

    @Test("a message split at every byte offset (prefix included) is reported once, identically")
    func splitAtEveryOffset() {
        let bytes = Frames.message(payload) + Frames.message([7, 7]) + Frames.message([])
        let (whole, _) = frame([bytes])
        for cut in 0...bytes.count {
            let (seen, framer) = frame([Array(bytes[..<cut]), Array(bytes[cut...])])
            #expect(seen == whole, "cut at \(cut)")
            #expect(framer.payloadBytes == 42)
        }
        let (oneByOne, _) = frame(bytes.map { [$0] })
        #expect(oneByOne == whole)
    }

    @Test("zero-length messages are counted, with nothing captured and not truncated")
    func zeroLength() {
        var framer = GRPCMessageFramer()
        var messages: [GRPCMessageFramer.Message] = []
        framer.feed(
            ByteBuffer(bytes: Frames.message([]) + Frames.message([]) + Frames.message([])), captureLimit: { _ in 100 }
        ) {
            messages.append($0)
        }
        #expect(messages.count == 3)
        #expect(messages.allSatisfy { $0.length == 0 && $0.captured == nil && !$0.truncated })
        #expect(framer.payloadBytes == 0)
        #expect(framer.isAtMessageBoundary)
    }

    @Test("a zero-length message whose prefix arrives byte by byte is reported when its fifth byte arrives")
    func zeroLengthPrefixSplit() {
        var framer = GRPCMessageFramer()
        var count = 0
        for (i, byte) in Frames.message([]).enumerated() {
            framer.feed(ByteBuffer(bytes: [byte]), captureLimit: { _ in 0 }) { _ in count += 1 }
            #expect(count == (i == 4 ? 1 : 0))
        }
    }

    @Test("the compressed flag is bit 0 of the first byte")
    func compressedFlag() {
        let (seen, _) = frame([[1, 0, 0, 0, 1, 0xAA], [0, 0, 0, 0, 1, 0xBB], [3, 0, 0, 0, 0], [2, 0, 0, 0, 0]])
        #expect(seen.map(\.compressed) == [true, false, true, false])
    }

    @Test("capture stops at the limit, across pieces, and marks the message truncated")
    func captureLimit() {
        var framer = GRPCMessageFramer()
        var messages: [GRPCMessageFramer.Message] = []
        let bytes = Frames.message(payload)
        for piece in [Array(bytes[..<8]), Array(bytes[8..<30]), Array(bytes[30...])] {
            framer.feed(ByteBuffer(bytes: piece), captureLimit: { _ in 10 }) { messages.append($0) }
        }
        #expect(messages.count == 1)
        #expect(messages[0].captured.map { Array($0.readableBytesView) } == Array(payload[..<10]))
        #expect(messages[0].truncated)
        #expect(messages[0].length == 40)
    }

    @Test("capture limit 0 keeps nothing")
    func noCapture() {
        let (seen, _) = frame([Frames.message(payload)], captureLimit: { _ in 0 })
        #expect(seen == [Seen(compressed: false, length: 40, captured: nil)])
    }

    @Test("a negative capture limit is treated as 0")
    func negativeCapture() {
        let (seen, _) = frame([Frames.message(payload)], captureLimit: { _ in -5 })
        #expect(seen[0].captured == nil)
    }

    @Test("the capture limit is asked per message with the message's index")
    func capturePerIndex() {
        var asked: [Int] = []
        var framer = GRPCMessageFramer()
        var captured: [[UInt8]?] = []
        let bytes = Frames.message([1]) + Frames.message([2]) + Frames.message([3])
        framer.feed(
            ByteBuffer(bytes: bytes),
            captureLimit: { index in
                asked.append(index)
                return index == 1 ? 10 : 0
            }
        ) { captured.append($0.captured.map { Array($0.readableBytesView) }) }
        #expect(asked == [0, 1, 2])
        #expect(captured == [nil, [2], nil])
    }

    @Test("a partial message counts its payload bytes but is not reported, and the framer is mid-message")
    func partialMessage() {
        var framer = GRPCMessageFramer()
        var count = 0
        #expect(framer.isAtMessageBoundary)
        framer.feed(ByteBuffer(bytes: [0, 0, 0]), captureLimit: { _ in 0 }) { _ in count += 1 }
        #expect(!framer.isAtMessageBoundary, "inside the prefix")
        framer.feed(ByteBuffer(bytes: [0, 100] + Array(repeating: 1, count: 60)), captureLimit: { _ in 0 }) { _ in
            count += 1
        }
        #expect(!framer.isAtMessageBoundary, "inside the payload")
        #expect(count == 0)
        #expect(framer.payloadBytes == 60)
        #expect(framer.largestMessage == 100)
        framer.feed(ByteBuffer(bytes: Array(repeating: 1, count: 40)), captureLimit: { _ in 0 }) { _ in count += 1 }
        #expect(count == 1)
        #expect(framer.isAtMessageBoundary)
    }

    @Test("a 4 GiB length prefix followed by a few bytes neither crashes nor reports a message")
    func hugeLengthPrefix() {
        let (seen, framer) = frame([[0, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3]])
        #expect(seen.isEmpty)
        #expect(framer.largestMessage == 0xFFFF_FFFF)
        #expect(framer.payloadBytes == 3)
    }

    @Test("an error thrown by onMessage propagates to the caller")
    func onMessageErrorPropagates() {
        struct Stop: Error {}
        var framer = GRPCMessageFramer()
        #expect(throws: Stop.self) {
            try framer.feed(ByteBuffer(bytes: Frames.message([1])), captureLimit: { _ in 0 }) { _ in throw Stop() }
        }
    }

    @Test("random splits of random messages give the same messages as feeding them whole")
    func randomSplits() {
        var rng = SeededGenerator(seed: 0x6772_7063)
        for _ in 0..<200 {
            var bytes: [UInt8] = []
            for _ in 0..<Int.random(in: 0...6, using: &rng) {
                let length = Int.random(in: 0...70, using: &rng)
                bytes += Frames.message(
                    (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) },
                    compressed: Bool.random(using: &rng))
            }
            let limit = Int.random(in: 0...80, using: &rng)
            let (whole, _) = frame([bytes], captureLimit: { _ in limit })
            var split: [[UInt8]] = []
            var i = 0
            while i < bytes.count {
                let n = Int.random(in: 1...9, using: &rng)
                split.append(Array(bytes[i..<min(bytes.count, i + n)]))
                i += n
            }
            let (pieces, _) = frame(split, captureLimit: { _ in limit })
            #expect(pieces == whole)
        }
    }
}
