import NIOCore
import NIOHPACK
import TapWire
import Testing

/// One malformed input: bytes sent in `direction` after a call has been opened on stream 1.
struct HostileCase: Sendable, CustomTestStringConvertible {
    var name: String
    var direction: Direction
    var bytes: [UInt8]
    /// The exact reason, or its beginning when it ends with "…".
    var reason: String

    var testDescription: String { name }

    func matches(_ actual: String?) -> Bool {
        guard let actual else { return false }
        return reason.hasSuffix("…") ? actual.hasPrefix(String(reason.dropLast())) : actual == reason
    }
}

private let c2s = Direction.clientToServer
private let s2c = Direction.serverToClient

/// A header block that fits no HPACK rule (index 254 of an empty dynamic table).
private let badIndexBlock: [UInt8] = [0xFF, 0x7F]

private func requestBlock() -> [UInt8] {
    var encoder = BlockEncoder()
    return encoder.encode(BlockEncoder.request(path: "/h.S/Three"))
}

/// Many references to one large dynamic-table entry: a small block that decodes to more than 1 MiB of headers.
private func hpackBomb() -> [UInt8] {
    var block = [UInt8]()
    let value = [UInt8](repeating: UInt8(ascii: "a"), count: 4000)
    block +=
        [0x40, 0x06] + Array("x-bomb".utf8) + [
            0x7F, 0x80 | UInt8(truncatingIfNeeded: (4000 - 127) & 0x7F), UInt8((4000 - 127) >> 7),
        ] + value
    block += [UInt8](repeating: 0x80 | 62, count: 300)
    return block
}

private func tableSizeUpdateAboveLimit() -> [UInt8] {
    var encoder = BlockEncoder()
    try! encoder.encoder.setDynamicTableSize(65536)
    return encoder.encode(BlockEncoder.request())
}

let hostileCases: [HostileCase] = [
    HostileCase(
        name: "DATA on stream 0", direction: c2s, bytes: Frames.data(stream: 0, [1, 2, 3]),
        reason: "DATA frame on stream 0"),
    HostileCase(
        name: "server DATA on stream 0", direction: s2c, bytes: Frames.data(stream: 0, []),
        reason: "DATA frame on stream 0"),
    HostileCase(
        name: "SETTINGS length not a multiple of 6", direction: s2c,
        bytes: Frames.frame(type: 0x4, stream: 0, [0, 1, 0, 0, 0]),
        reason: "malformed SETTINGS frame (length 5, stream 0)"),
    HostileCase(
        name: "SETTINGS on a stream", direction: c2s, bytes: Frames.frame(type: 0x4, stream: 1, []),
        reason: "malformed SETTINGS frame (length 0, stream 1)"),
    HostileCase(
        name: "SETTINGS ACK with a payload", direction: s2c,
        bytes: Frames.frame(type: 0x4, flags: 1, stream: 0, [0, 4, 0, 0, 0, 1]),
        reason: "SETTINGS ACK with a payload"),
    HostileCase(
        name: "RST_STREAM of 3 bytes", direction: c2s, bytes: Frames.frame(type: 0x3, stream: 1, [0, 0, 8]),
        reason: "malformed RST_STREAM frame (length 3, stream 1)"),
    HostileCase(
        name: "RST_STREAM of 5 bytes", direction: s2c, bytes: Frames.frame(type: 0x3, stream: 1, [0, 0, 0, 8, 0]),
        reason: "malformed RST_STREAM frame (length 5, stream 1)"),
    HostileCase(
        name: "RST_STREAM on stream 0", direction: s2c, bytes: Frames.rstStream(stream: 0, code: 8),
        reason: "malformed RST_STREAM frame (length 4, stream 0)"),
    HostileCase(
        name: "CONTINUATION without HEADERS", direction: c2s,
        bytes: Frames.continuation(stream: 3, [0x82], endHeaders: true),
        reason: "CONTINUATION frame on stream 3 without a preceding HEADERS"),
    HostileCase(
        name: "CONTINUATION on another stream than its HEADERS", direction: c2s,
        bytes: Frames.headers(stream: 3, block: [0x82], endHeaders: false)
            + Frames.continuation(stream: 5, [0x86], endHeaders: true),
        reason: "CONTINUATION frame on stream 5 without a preceding HEADERS"),
    HostileCase(
        name: "PING between HEADERS and CONTINUATION", direction: c2s,
        bytes: Frames.headers(stream: 3, block: [0x82], endHeaders: false) + Frames.ping(),
        reason: "PING frame arrived while stream 3 expected CONTINUATION"),
    HostileCase(
        name: "DATA between HEADERS and CONTINUATION", direction: c2s,
        bytes: Frames.headers(stream: 3, block: [0x82], endHeaders: false) + Frames.data(stream: 1, [0, 0, 0, 0, 0]),
        reason: "DATA frame arrived while stream 3 expected CONTINUATION"),
    // Pins a decoder bug: a DATA frame without content yields only `.dataEnd`, which skips the CONTINUATION check.
    HostileCase(
        name: "empty DATA between HEADERS and CONTINUATION", direction: s2c,
        bytes: Frames.headers(stream: 1, block: [0x88], endHeaders: false)
            + Frames.data(stream: 1, [], endStream: true),
        reason: "DATA frame arrived while stream 1 expected CONTINUATION"),
    HostileCase(
        name: "HEADERS between HEADERS and CONTINUATION", direction: c2s,
        bytes: Frames.headers(stream: 3, block: [0x82], endHeaders: false) + Frames.headers(stream: 5, block: [0x82]),
        reason: "HEADERS frame arrived while stream 3 expected CONTINUATION"),
    HostileCase(
        name: "unknown frame between HEADERS and CONTINUATION", direction: c2s,
        bytes: Frames.headers(stream: 3, block: [0x82], endHeaders: false) + Frames.frame(type: 0xEE, stream: 0, []),
        reason: "UNKNOWN(0xee) frame arrived while stream 3 expected CONTINUATION"),
    HostileCase(
        name: "HEADERS padding longer than payload", direction: c2s,
        bytes: Frames.frame(type: 0x1, flags: Frames.padded | Frames.endHeaders, stream: 3, [10, 0x82, 0, 0]),
        reason: "HEADERS frame on stream 3 has padding longer than its payload"),
    HostileCase(
        name: "padded HEADERS without its pad length", direction: c2s,
        bytes: Frames.frame(type: 0x1, flags: Frames.padded | Frames.endHeaders, stream: 3, []),
        reason: "HEADERS frame too short for its pad length"),
    HostileCase(
        name: "DATA padding longer than payload", direction: c2s,
        bytes: Frames.frame(type: 0x0, flags: Frames.padded, stream: 1, [4, 1, 2, 3]),
        reason: "DATA frame on stream 1 has padding longer than its payload"),
    HostileCase(
        name: "padded DATA without its pad length", direction: s2c,
        bytes: Frames.frame(type: 0x0, flags: Frames.padded, stream: 1, []),
        reason: "padded DATA frame on stream 1 has no pad length"),
    HostileCase(
        name: "HEADERS too short for its priority", direction: c2s,
        bytes: Frames.frame(type: 0x1, flags: Frames.priority | Frames.endHeaders, stream: 3, [0, 0, 0]),
        reason: "HEADERS frame too short for its priority"),
    HostileCase(
        name: "HEADERS on stream 0", direction: c2s, bytes: Frames.headers(stream: 0, block: [0x82]),
        reason: "HEADERS frame on stream 0"),
    HostileCase(
        name: "PUSH_PROMISE too short", direction: s2c,
        bytes: Frames.frame(type: 0x5, flags: Frames.endHeaders, stream: 1, [0, 0]),
        reason: "PUSH_PROMISE frame too short"),
    HostileCase(
        name: "HPACK index beyond the tables", direction: c2s, bytes: Frames.headers(stream: 3, block: badIndexBlock),
        reason: "HPACK decoding failed on stream 3: …"),
    HostileCase(
        name: "HPACK index 0", direction: s2c, bytes: Frames.headers(stream: 1, block: [0x80]),
        reason: "HPACK decoding failed on stream 1: …"),
    HostileCase(
        name: "HPACK literal cut short", direction: c2s, bytes: Frames.headers(stream: 3, block: [0x40, 0x05, 0x61]),
        reason: "HPACK decoding failed on stream 3: …"),
    HostileCase(
        name: "HPACK table size update above the SETTINGS limit", direction: c2s,
        bytes: Frames.headers(stream: 3, block: tableSizeUpdateAboveLimit()),
        reason: "HPACK decoding failed on stream 3: …"),
    HostileCase(
        name: "HPACK block decoding to more than 1 MiB of headers", direction: c2s,
        bytes: Frames.headers(stream: 3, block: hpackBomb()), reason: "HPACK decoding failed on stream 3: …"),
    HostileCase(
        name: "oversized HEADERS frame", direction: c2s,
        bytes: Frames.frame(type: 0x1, flags: 4, stream: 3, length: 2 << 20),
        reason: "HEADERS frame of 2097152 bytes exceeds the 1048576-byte limit"),
    HostileCase(
        name: "oversized frame of unknown type", direction: s2c,
        bytes: Frames.frame(type: 0xCC, stream: 0, length: 0xFF_FFFF),
        reason: "UNKNOWN(0xcc) frame of 16777215 bytes exceeds the 1048576-byte limit"),
    HostileCase(
        name: "header block over 1 MiB across CONTINUATION frames", direction: c2s,
        bytes: Frames.headers(stream: 3, block: [UInt8](repeating: 0x82, count: 600_000), endHeaders: false)
            + Frames.continuation(stream: 3, [UInt8](repeating: 0x82, count: 600_000), endHeaders: true),
        reason: "header block on stream 3 exceeds 1048576 bytes"),
    HostileCase(
        name: "PING of 4 bytes", direction: c2s, bytes: Frames.frame(type: 0x6, stream: 0, [1, 2, 3, 4]),
        reason: "malformed PING frame"),
    HostileCase(
        name: "PING on a stream", direction: s2c, bytes: Frames.frame(type: 0x6, stream: 1, [1, 2, 3, 4, 5, 6, 7, 8]),
        reason: "malformed PING frame"),
    HostileCase(
        name: "GOAWAY of 4 bytes", direction: s2c, bytes: Frames.frame(type: 0x7, stream: 0, [0, 0, 0, 1]),
        reason: "malformed GOAWAY frame"),
    HostileCase(
        name: "GOAWAY on a stream", direction: s2c,
        bytes: Frames.frame(type: 0x7, stream: 1, Frames.be32(0) + Frames.be32(0)),
        reason: "malformed GOAWAY frame"),
    HostileCase(
        name: "WINDOW_UPDATE of 3 bytes", direction: c2s, bytes: Frames.frame(type: 0x8, stream: 0, [0, 0, 1]),
        reason: "malformed WINDOW_UPDATE frame"),
    HostileCase(
        name: "PRIORITY of 4 bytes", direction: c2s, bytes: Frames.frame(type: 0x2, stream: 1, [0, 0, 0, 1]),
        reason: "malformed PRIORITY frame"),
    HostileCase(
        name: "PRIORITY on stream 0", direction: c2s, bytes: Frames.frame(type: 0x2, stream: 0, [0, 0, 0, 1, 1]),
        reason: "malformed PRIORITY frame"),
]

/// Checks what must hold after any input, valid or not.
func expectInvariants(
    _ outcome: ConnectionOutcome, fedToServer: Int, fedToClient: Int, sourceLocation: SourceLocation = #_sourceLocation
) {
    #expect(outcome.decoder.bytesToServer == fedToServer, sourceLocation: sourceLocation)
    #expect(outcome.decoder.bytesToClient == fedToClient, sourceLocation: sourceLocation)
    if let reason = outcome.decoder.stoppedReason {
        #expect(!outcome.decoder.isDecoding, sourceLocation: sourceLocation)
        #expect(!reason.isEmpty, sourceLocation: sourceLocation)
    }
    for record in outcome.records {
        #expect(
            !record.requestMetadata.contains { $0.name.lowercased() == "authorization" }, sourceLocation: sourceLocation
        )
        if case .decodingStopped(let reason) = record.end {
            #expect(reason == outcome.decoder.stoppedReason, sourceLocation: sourceLocation)
        }
    }
}

@Suite("Malformed and hostile input")
struct HostileInputTests {
    @Test(
        "a malformed frame stops decoding with a readable reason, ends the open call, and bytes are still counted",
        arguments: hostileCases)
    func malformedFrame(_ hostile: HostileCase) throws {
        var s = SyntheticSession()
        s.request(stream: 1, messages: [[1, 2, 3]], endRequest: false)
        s.send(.serverToClient, Frames.headers(stream: 1, block: s.server.encode(BlockEncoder.responseHeaders)))
        let stopTime = s.time
        s.send(hostile.direction, hostile.bytes)
        // Whatever follows is forwarded and counted but no longer decoded.
        s.send(.clientToServer, Frames.rstStream(stream: 1, code: 8))
        s.send(.serverToClient, [0xFF, 0xFF])
        let outcome = decodeConnection(s.chunks, close: 10_000)
        let reason = try #require(outcome.decoder.stoppedReason)
        #expect(hostile.matches(reason), "reason: \(reason)")
        #expect(outcome.decoder.kind == .http2)
        #expect(!outcome.decoder.isDecoding)
        #expect(outcome.records.count == 1)
        let r = try #require(outcome.records.first)
        #expect(r.streamID == 1)
        #expect(r.end == .decodingStopped(reason))
        #expect(r.endTime == stopTime)
        #expect(r.requestMessages == 1)
        let toServer = s.chunks.filter { $0.direction == .clientToServer }.reduce(0) { $0 + $1.bytes.count }
        let toClient = s.chunks.filter { $0.direction == .serverToClient }.reduce(0) { $0 + $1.bytes.count }
        expectInvariants(outcome, fedToServer: toServer, fedToClient: toClient)
    }

    // Pins a decoder bug: the match on "authorization" is case-sensitive, so the value lands in requestMetadata.
    @Test("an upper-case Authorization header from the wire never reaches the record's metadata")
    func upperCaseAuthorizationOnTheWire() throws {
        var s = SyntheticSession()
        // An encoder would name the static table's lower-case `authorization`; a hostile client writes the literal.
        func literal(_ name: String, _ value: String) -> [UInt8] {
            [0x00, UInt8(name.utf8.count)] + Array(name.utf8) + [UInt8(value.utf8.count)] + Array(value.utf8)
        }
        let block =
            s.client.encode([(":method", "POST"), (":path", "/h.S/M"), ("x-gitlab-correlation-id", "c")])
            + literal("Authorization", "Bearer v2.s3cret")
        s.send(.clientToServer, Frames.headers(stream: 1, block: block, endStream: true))
        s.send(.serverToClient, Frames.rstStream(stream: 1, code: 0x1))  // what a strict server answers
        let outcome = decodeConnection(s.chunks)
        let r = try #require(outcome.records.first)
        #expect(r.requestHeader("x-gitlab-correlation-id") == "c")
        #expect(r.hadAuthorization)
        #expect(!r.requestMetadata.contains { $0.value.contains("s3cret") }, "token kept: \(r.requestMetadata)")
    }

    @Test("a wrong preface after 11 matching bytes stops decoding")
    func wrongPreface() {
        var preface = HTTP2Preface.bytes
        preface[18] = UInt8(ascii: "X")
        let outcome = decodeConnection([Chunk(direction: .clientToServer, bytes: preface + Frames.settings(), time: 1)])
        #expect(outcome.decoder.kind == .http2)
        #expect(outcome.decoder.stoppedReason == "client did not send the HTTP/2 connection preface")
        #expect(outcome.decoder.bytesToServer == 33)
    }

    @Test("a wrong preface byte is caught even when the preface arrives one byte at a time")
    func wrongPrefaceBytewise() {
        var preface = HTTP2Preface.bytes
        preface[23] = 0
        let chunks = preface.map { Chunk(direction: .clientToServer, bytes: [$0], time: 1) }
        let outcome = decodeConnection(chunks)
        #expect(outcome.decoder.stoppedReason == "client did not send the HTTP/2 connection preface")
    }

    @Test("more calls open at once than the limit stops decoding and ends the open ones")
    func tooManyCalls() {
        var limits = GRPCCallAssembler.Limits()
        limits.maxOpenCalls = 3
        var s = SyntheticSession()
        for stream: UInt32 in [1, 3, 5, 7] { s.request(stream: stream) }
        let outcome = decodeConnection(s.chunks, limits: limits)
        #expect(outcome.decoder.stoppedReason == "more than 3 calls open at once")
        #expect(outcome.records.map(\.streamID) == [1, 3, 5])
        #expect(outcome.records.allSatisfy { $0.end == .decodingStopped("more than 3 calls open at once") })
    }

    @Test("every prefix of a real connection is valid: truncation never stops decoding, open calls end as lost")
    func truncatedRealTraffic() throws {
        for fixture in try WireFixture.all() {
            let whole = decodeConnection(fixture.timeline).records.summaries
            let timeline = fixture.timeline
            for cut in stride(from: 0, through: fixture.totalBytes, by: 7) {
                var fed = 0
                var prefix: [Chunk] = []
                for chunk in pieces(of: timeline, cutAt: [cut]) where fed < cut {
                    prefix.append(chunk)
                    fed += chunk.bytes.count
                }
                let outcome = decodeConnection(prefix, close: 5000)
                if outcome.decoder.stoppedReason != nil {
                    Issue.record("\(fixture.name) cut at \(cut): \(outcome.decoder.stoppedReason!)")
                    continue
                }
                #expect(outcome.records.count <= whole.count)
                for record in outcome.records.summaries {
                    let reference = try #require(whole.first { $0.streamID == record.streamID })
                    #expect(record.end == .connectionLost || record == reference, "\(fixture.name) cut at \(cut)")
                }
            }
        }
    }

    @Test("random bytes after a valid preface never crash the decoder (seeded, 3000 streams)")
    func randomBytes() {
        var rng = SeededGenerator(seed: 0x686F_7374)
        var stopped = 0
        for _ in 0..<3000 {
            var chunks = [Chunk(direction: .clientToServer, bytes: HTTP2Preface.bytes, time: 0)]
            for i in 0..<Int.random(in: 1...8, using: &rng) {
                let bytes = (0..<Int.random(in: 0...120, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng)
                }
                chunks.append(
                    Chunk(
                        direction: Bool.random(using: &rng) ? .clientToServer : .serverToClient, bytes: bytes,
                        time: UInt64(i)))
            }
            let outcome = decodeConnection(chunks, close: 100)
            if outcome.decoder.stoppedReason != nil { stopped += 1 }
            expectInvariants(
                outcome,
                fedToServer: chunks.filter { $0.direction == .clientToServer }.reduce(0) { $0 + $1.bytes.count },
                fedToClient: chunks.filter { $0.direction == .serverToClient }.reduce(0) { $0 + $1.bytes.count })
        }
        #expect(stopped > 1000, "random bytes are mostly rejected")
    }

    @Test("random bytes with no preface are sniffed as opaque or undetermined, never decoded")
    func randomBytesNoPreface() {
        var rng = SeededGenerator(seed: 0x6F70_6171)
        for _ in 0..<1000 {
            let bytes = (0..<Int.random(in: 0...40, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let outcome = decodeConnection([Chunk(direction: .clientToServer, bytes: bytes, time: 1)], close: 2)
            #expect(outcome.records.isEmpty)
            #expect(outcome.decoder.stoppedReason == nil)
            #expect([ConnectionKind.opaque, .undetermined].contains(outcome.decoder.kind))
        }
    }

    @Test(
        "random well-formed frame headers with random flags and payloads never crash the decoder (seeded, 3000 sessions)"
    )
    func randomFrames() {
        var rng = SeededGenerator(seed: 0x6672_6D73)
        for _ in 0..<3000 {
            var s = SyntheticSession()
            for _ in 0..<Int.random(in: 1...12, using: &rng) {
                let direction: Direction = Bool.random(using: &rng) ? .clientToServer : .serverToClient
                let type: UInt8 = [0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 0x0A, 0xFF].randomElement(using: &rng)!
                let flags: UInt8 = [0, 1, 4, 5, 8, 0x20, 0x2D, 0xFF].randomElement(using: &rng)!
                let stream: UInt32 = [0, 1, 1, 3, 2, 0x7FFF_FFFF].randomElement(using: &rng)!
                var payload: [UInt8]
                switch Int.random(in: 0..<4, using: &rng) {
                case 0:
                    payload =
                        direction == .clientToServer
                        ? s.client.encode(BlockEncoder.request()) : s.server.encode(BlockEncoder.trailers(status: 0))
                case 1:
                    payload = Frames.message(
                        (0..<Int.random(in: 0...10, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) })
                default:
                    payload = (0..<Int.random(in: 0...24, using: &rng)).map { _ in
                        UInt8.random(in: 0...255, using: &rng)
                    }
                }
                if Int.random(in: 0..<4, using: &rng) == 0, !payload.isEmpty {
                    payload[Int.random(in: 0..<payload.count, using: &rng)] ^= 0xFF
                }
                s.send(direction, Frames.frame(type: type, flags: flags, stream: stream, payload))
            }
            let outcome = decodeConnection(s.chunks, close: 10_000)
            expectInvariants(
                outcome,
                fedToServer: s.chunks.filter { $0.direction == .clientToServer }.reduce(0) { $0 + $1.bytes.count },
                fedToClient: s.chunks.filter { $0.direction == .serverToClient }.reduce(0) { $0 + $1.bytes.count })
        }
    }

    @Test(
        "random mutations of real traffic (flip, truncate, duplicate, delete) never crash the decoder",
        arguments: WireFixture.names)
    func mutatedRealTraffic(name: String) throws {
        let fixture = try WireFixture.load(name)
        var rng = SeededGenerator(seed: UInt64(truncatingIfNeeded: name.utf8.reduce(0) { $0 &* 131 &+ Int($1) }))
        for round in 0..<300 {
            var c2sBytes = fixture.clientToServer
            var s2cBytes = fixture.serverToClient
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                let mutateClient = Bool.random(using: &rng)
                var bytes = mutateClient ? c2sBytes : s2cBytes
                guard !bytes.isEmpty else { continue }
                let at = Int.random(in: 0..<bytes.count, using: &rng)
                switch round % 4 {
                case 0:
                    bytes[at] ^= UInt8.random(in: 1...255, using: &rng)
                case 1:
                    bytes.removeSubrange(at...)
                case 2:
                    let end = min(bytes.count, at + Int.random(in: 1...64, using: &rng))
                    bytes.insert(contentsOf: bytes[at..<end], at: end)
                default:
                    bytes.removeSubrange(at..<min(bytes.count, at + Int.random(in: 1...64, using: &rng)))
                }
                if mutateClient { c2sBytes = bytes } else { s2cBytes = bytes }
            }
            let mutated = WireFixture(name: name, clientToServer: c2sBytes, serverToClient: s2cBytes)
            var cuts: [Int] = []
            var at = 0
            while at < mutated.totalBytes {
                at += Int.random(in: 1...300, using: &rng)
                cuts.append(at)
            }
            let outcome = decodeConnection(pieces(of: mutated.timeline, cutAt: cuts), close: 1000)
            expectInvariants(outcome, fedToServer: c2sBytes.count, fedToClient: s2cBytes.count)
        }
    }
}
