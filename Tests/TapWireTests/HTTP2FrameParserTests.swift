import NIOCore
import TapWire
import Testing

/// Parser events in comparable form; adjacent DATA pieces of one frame are merged so any split compares equal.
fileprivate enum Parsed: Hashable {
    case frame(HTTP2FrameHeader, [UInt8])
    case data(UInt32, [UInt8])
    case dataEnd(HTTP2FrameHeader)
}

fileprivate struct ParseResult {
    var events: [Parsed] = []
    /// Number of `.data` events before merging.
    var dataPieces = 0
    var error: WireDecodingError?
    var parser: HTTP2FrameParser
}

private func parse(_ pieces: [[UInt8]], parser: HTTP2FrameParser = HTTP2FrameParser()) -> ParseResult {
    var result = ParseResult(parser: parser)
    do {
        for piece in pieces {
            try result.parser.feed(ByteBuffer(bytes: piece)) { event in
                switch event {
                case .frame(let header, let payload):
                    result.events.append(.frame(header, Array(payload.readableBytesView)))
                case .data(let stream, let piece):
                    result.dataPieces += 1
                    if case .data(let s, let bytes) = result.events.last, s == stream {
                        result.events[result.events.count - 1] = .data(s, bytes + Array(piece.readableBytesView))
                    } else {
                        result.events.append(.data(stream, Array(piece.readableBytesView)))
                    }
                case .dataEnd(let header):
                    result.events.append(.dataEnd(header))
                }
            }
        }
    } catch let error as WireDecodingError {
        result.error = error
    } catch {
        Issue.record("unexpected error \(error)")
    }
    return result
}

private func header(_ length: Int, _ type: HTTP2FrameType, _ flags: UInt8, _ stream: UInt32) -> HTTP2FrameHeader {
    HTTP2FrameHeader(length: length, type: type, flags: flags, streamID: stream)
}

@Suite("HTTP2FrameParser")
struct HTTP2FrameParserTests {
    /// A sequence covering every path of the parser: control frames, empty frames, plain, padded and empty DATA,
    /// unknown types.
    static let sequence: [UInt8] =
        Frames.settings([(0x4, 65535), (0x1, 8192)])
        + Frames.settingsAck()
        + Frames.headers(stream: 1, block: [0x82, 0x86, 0x84])
        + Frames.data(stream: 1, Array(0..<20))
        + Frames.frame(type: 0x0, flags: Frames.padded | Frames.endStream, stream: 1, [3] + [0xA, 0xB] + [0, 0, 0])
        + Frames.frame(type: 0x0, flags: Frames.padded, stream: 3, [4, 0, 0, 0, 0])
        + Frames.data(stream: 3, [], endStream: true)
        + Frames.frame(type: 0xFA, flags: 0xFF, stream: 7, [1, 2, 3])
        + Frames.ping()
        + Frames.goAway(lastStream: 3, code: 0, debug: "bye")

    fileprivate static let expected: [Parsed] = [
        .frame(header(12, .settings, 0, 0), Array(Frames.settings([(0x4, 65535), (0x1, 8192)])[9...])),
        .frame(header(0, .settings, 1, 0), []),
        .frame(header(3, .headers, 4, 1), [0x82, 0x86, 0x84]),
        .data(1, Array(0..<20)),
        .dataEnd(header(20, .data, 0, 1)),
        .data(1, [0xA, 0xB]),
        .dataEnd(header(6, .data, 9, 1)),
        .dataEnd(header(5, .data, 8, 3)),
        .dataEnd(header(0, .data, 1, 3)),
        .frame(header(3, HTTP2FrameType(rawValue: 0xFA), 0xFF, 7), [1, 2, 3]),
        .frame(header(8, .ping, 0, 0), [1, 2, 3, 4, 5, 6, 7, 8]),
        .frame(header(11, .goAway, 0, 0), Frames.be32(3) + Frames.be32(0) + Array("bye".utf8)),
    ]

    @Test("a frame sequence fed whole gives every frame, DATA content without padding, and a DATA end per frame")
    func wholeSequence() {
        let result = parse([Self.sequence])
        #expect(result.error == nil)
        #expect(result.events == Self.expected)
        #expect(result.parser.isAtFrameBoundary)
    }

    @Test("the sequence split in two at every offset gives the same events")
    func splitAtEveryOffset() {
        let bytes = Self.sequence
        for cut in 0...bytes.count {
            let result = parse([Array(bytes[..<cut]), Array(bytes[cut...])])
            #expect(result.error == nil, "cut \(cut)")
            #expect(result.events == Self.expected, "cut \(cut)")
        }
    }

    @Test("the sequence fed one byte at a time gives the same events")
    func oneByteAtATime() {
        let result = parse(Self.sequence.map { [$0] })
        #expect(result.events == Self.expected)
        #expect(result.parser.isAtFrameBoundary)
    }

    @Test("the header's 24-bit length, type, flags and stream id are read big-endian, the reserved bit cleared")
    func headerFields() {
        let bytes: [UInt8] =
            [0x00, 0x01, 0x02, 0x08, 0xAB, 0x80, 0x00, 0x01, 0x05] + Array(repeating: 0, count: 0x0102)
        let result = parse([bytes])
        #expect(
            result.events == [.frame(header(0x0102, .windowUpdate, 0xAB, 0x105), Array(repeating: 0, count: 0x0102))])
    }

    @Test("DATA content is handed out as it arrives, without waiting for the end of the frame")
    func dataIsStreamed() {
        let frame = Frames.data(stream: 5, Array(repeating: 7, count: 100))
        var parser = HTTP2FrameParser()
        var pieces: [Int] = []
        var ended = false
        let feed = { (bytes: ArraySlice<UInt8>) in
            try parser.feed(ByteBuffer(bytes: bytes)) { event in
                switch event {
                case .data(let stream, let piece):
                    #expect(stream == 5)
                    pieces.append(piece.readableBytes)
                case .dataEnd: ended = true
                case .frame: Issue.record("no control frame expected")
                }
            }
        }
        #expect(throws: Never.self) { try feed(frame[..<(9 + 30)]) }
        #expect(pieces == [30])
        #expect(!ended)
        #expect(!parser.isAtFrameBoundary)
        #expect(throws: Never.self) { try feed(frame[(9 + 30)...]) }
        #expect(pieces == [30, 70])
        #expect(ended)
        #expect(parser.isAtFrameBoundary)
    }

    @Test("a padded DATA frame ends only after its padding has been consumed")
    func paddedDataEndsAfterPadding() {
        let frame = Frames.frame(type: 0x0, flags: Frames.padded, stream: 1, [4, 0xC, 0xD, 0, 0, 0, 0])
        let first = parse([Array(frame[..<(9 + 3 + 2)])])
        #expect(first.events == [.data(1, [0xC, 0xD])])
        #expect(!first.parser.isAtFrameBoundary)
        let rest = parse([Array(frame[(9 + 3 + 2)...])], parser: first.parser)
        #expect(rest.events == [.dataEnd(header(7, .data, 8, 1))])
        #expect(rest.parser.isAtFrameBoundary)
    }

    @Test("a control frame is delivered whole even when it arrives byte by byte")
    func controlFrameWhole() {
        let frame = Frames.goAway(lastStream: 9, code: 2, debug: String(repeating: "x", count: 50))
        let result = parse(frame.map { [$0] })
        #expect(result.events == [.frame(header(58, .goAway, 0, 0), Array(frame[9...]))])
    }

    @Test("isAtFrameBoundary is false inside a frame header and inside a control payload")
    func frameBoundary() {
        let half = parse([Array(Frames.ping()[..<4])])
        #expect(!half.parser.isAtFrameBoundary)
        let payload = parse([Array(Frames.ping()[..<12])])
        #expect(!payload.parser.isAtFrameBoundary)
        #expect(payload.events.isEmpty)
    }

    @Test("DATA on stream 0 is refused")
    func dataOnStreamZero() {
        let result = parse([Frames.data(stream: 0, [1, 2])])
        #expect(result.error?.reason == "DATA frame on stream 0")
    }

    @Test("a padded DATA frame whose padding is longer than its payload is refused")
    func dataPaddingTooLong() {
        let result = parse([Frames.frame(type: 0x0, flags: Frames.padded, stream: 1, [5, 1, 2, 3])])
        #expect(result.error?.reason == "DATA frame on stream 1 has padding longer than its payload")
        #expect(result.events.isEmpty)
    }

    @Test("a padded DATA frame without room for its pad length is refused")
    func paddedDataWithoutPadLength() {
        let result = parse([Frames.frame(type: 0x0, flags: Frames.padded, stream: 3, [])])
        #expect(result.error?.reason == "padded DATA frame on stream 3 has no pad length")
    }

    @Test("a control frame above the limit is refused from its header alone, before its payload arrives")
    func oversizedControlFrame() {
        let result = parse([Frames.frame(type: 0x1, flags: 4, stream: 1, length: (1 << 20) + 1)])
        #expect(result.error?.reason == "HEADERS frame of 1048577 bytes exceeds the 1048576-byte limit")
        let custom = parse(
            [Frames.settings([(1, 1), (2, 2), (3, 3)])], parser: HTTP2FrameParser(maxControlPayload: 17))
        #expect(custom.error?.reason == "SETTINGS frame of 18 bytes exceeds the 17-byte limit")
    }

    @Test("a DATA frame far above the control limit streams through")
    func largeDataIsNotLimited() {
        let content = [UInt8](repeating: 0x5A, count: 64)
        let result = parse([Frames.data(stream: 1, content)], parser: HTTP2FrameParser(maxControlPayload: 8))
        #expect(result.error == nil)
        #expect(result.events == [.data(1, content), .dataEnd(header(64, .data, 0, 1))])
    }

    @Test("an unknown frame type is delivered as a frame with its raw type")
    func unknownType() {
        let result = parse([Frames.frame(type: 0x42, stream: 0, [9])])
        #expect(result.events == [.frame(header(1, HTTP2FrameType(rawValue: 0x42), 0, 0), [9])])
        #expect(HTTP2FrameType(rawValue: 0x42).description == "UNKNOWN(0x42)")
    }

    @Test("frame types and error codes have their RFC names")
    func names() {
        #expect(HTTP2FrameType.data.description == "DATA")
        #expect(HTTP2FrameType.continuation.description == "CONTINUATION")
        #expect(HTTP2FrameType.rstStream.description == "RST_STREAM")
        #expect(HTTP2FrameType.windowUpdate.description == "WINDOW_UPDATE")
        #expect(HTTP2ErrorCode.name(0x8) == "CANCEL")
        #expect(HTTP2ErrorCode.name(0x0) == "NO_ERROR")
        #expect(HTTP2ErrorCode.name(0xD) == "HTTP_1_1_REQUIRED")
        #expect(HTTP2ErrorCode.name(0xFF) == "0xff")
    }

    @Test("random byte streams never crash the parser, fed whole or in random pieces")
    func randomBytes() {
        var rng = SeededGenerator(seed: 0x7061_7273)
        for _ in 0..<2000 {
            let bytes = (0..<Int.random(in: 0...200, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            var pieces: [[UInt8]] = []
            var i = 0
            while i < bytes.count {
                let n = Int.random(in: 1...40, using: &rng)
                pieces.append(Array(bytes[i..<min(i + n, bytes.count)]))
                i += n
            }
            let whole = parse([bytes], parser: HTTP2FrameParser(maxControlPayload: 4096))
            let split = parse(pieces, parser: HTTP2FrameParser(maxControlPayload: 4096))
            #expect(whole.error == split.error)
            if whole.error == nil { #expect(whole.events == split.events) }
        }
    }
}
