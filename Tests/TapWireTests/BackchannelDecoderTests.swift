import NIOCore
import NIOHPACK
import TapWire
import Testing

/// yamux frames as hashicorp/yamux writes them.
enum Yamux {
    static func frame(type: UInt8, flags: UInt16 = 0, stream: UInt32, length: UInt32, version: UInt8 = 0) -> [UInt8] {
        [version, type] + Frames.be16(flags) + Frames.be32(stream) + Frames.be32(length)
    }
    static func data(stream: UInt32, _ payload: [UInt8], flags: UInt16 = 0) -> [UInt8] {
        frame(type: 0, flags: flags, stream: stream, length: UInt32(payload.count)) + payload
    }
    static func open(stream: UInt32) -> [UInt8] { frame(type: 1, flags: 0x1, stream: stream, length: 0) }
    static func ack(stream: UInt32) -> [UInt8] { frame(type: 1, flags: 0x2, stream: stream, length: 0) }
    static func window(stream: UInt32, _ delta: UInt32) -> [UInt8] { frame(type: 1, stream: stream, length: delta) }
    static func fin(stream: UInt32) -> [UInt8] { frame(type: 1, flags: 0x4, stream: stream, length: 0) }
    static func rst(stream: UInt32) -> [UInt8] { frame(type: 1, flags: 0x8, stream: stream, length: 0) }
    static func ping(_ value: UInt32, ack: Bool = false) -> [UInt8] { frame(type: 2, flags: ack ? 0x2 : 0x1, stream: 0, length: value) }
    static func goAway(_ code: UInt32) -> [UInt8] { frame(type: 3, stream: 0, length: code) }
    static func pkt(_ payload: [UInt8]) -> [UInt8] {
        Array(hex4(payload.count + 4).utf8) + payload
    }
}

/// A pkt-line length: 4 lower-case hex digits.
func hex4(_ value: Int) -> String {
    let hex = String(value, radix: 16)
    return String(repeating: "0", count: max(0, 4 - hex.count)) + hex
}

/// A scripted backchannel connection: Workhorse-like client, Gitaly-like server, a unary RPC with a sidechannel.
struct BackchannelScript {
    var chunks: [Chunk] = []
    var time: UInt64 = 1_000
    var client = BlockEncoder()
    var server = BlockEncoder()
    var reverseClient = BlockEncoder()
    var reverseServer = BlockEncoder()

    mutating func send(_ direction: Direction, _ bytes: [UInt8]) {
        time += 10
        chunks.append(Chunk(direction: direction, bytes: bytes, time: time))
    }

    /// The whole exchange; `packBytes` of band-1 data travel in the sidechannel.
    static func clone(sidechannelID: Int64 = 4242, packBytes: Int = 3000) -> BackchannelScript {
        var s = BackchannelScript()
        let c2s = Direction.clientToServer, s2c = Direction.serverToClient
        s.send(c2s, Array("backchannel".utf8))
        // Client's stream 1: its HTTP/2 session to Gitaly.
        s.send(c2s, Yamux.open(stream: 1) + Yamux.data(stream: 1, Frames.preface + Frames.settings()))
        s.send(s2c, Yamux.ack(stream: 1) + Yamux.data(stream: 1, Frames.settings() + Frames.settingsAck()))
        // Gitaly's stream 2: its HTTP/2 session to the client (Praefect votes would use it).
        s.send(s2c, Yamux.open(stream: 2) + Yamux.data(stream: 2, Frames.preface + Frames.settings()))
        s.send(c2s, Yamux.ack(stream: 2) + Yamux.data(stream: 2, Frames.settings()))
        // The RPC names its sidechannel.
        let request = BlockEncoder.request(
            path: "/gitaly.SmartHTTPService/PostUploadPackWithSidechannel",
            extra: [("gitaly-sidechannel-id", String(sidechannelID)), ("x-gitlab-client-name", "gitlab-workhorse")])
        let headers = s.client.encode(request)
        s.send(c2s, Yamux.data(stream: 1, Frames.headers(stream: 1, block: headers) + Frames.data(stream: 1, Frames.message([0x0A, 0x02, 0x12, 0x00]), endStream: true)))
        // Gitaly opens the sidechannel: magic + id, the client says ok and sends its request in pkt-lines.
        var id: [UInt8] = []
        for shift in stride(from: 56, through: 0, by: -8) { id.append(UInt8(truncatingIfNeeded: sidechannelID >> Int64(shift))) }
        s.send(s2c, Yamux.open(stream: 4) + Yamux.data(stream: 4, Array("sidechannel".utf8) + id))
        let want = Yamux.pkt(Array("want 0123456789abcdef0123456789abcdef01234567\n".utf8)) + Array("0000".utf8)
        s.send(c2s, Yamux.ack(stream: 4) + Yamux.data(stream: 4, Array("ok".utf8) + want))
        s.send(c2s, Yamux.fin(stream: 4))
        // The pack in band 1, progress in band 2, split over several yamux frames.
        var response = Yamux.pkt(Array("NAK\n".utf8)) + Yamux.pkt([2] + Array("Counting objects\n".utf8))
        var remaining = packBytes
        while remaining > 0 {
            let n = min(remaining, 1000)
            response += Yamux.pkt([1] + [UInt8](repeating: 0x50, count: n))
            remaining -= n
        }
        response += Array("0000".utf8)
        let half = response.count / 2
        s.send(s2c, Yamux.data(stream: 4, Array(response[..<half])))
        s.send(s2c, Yamux.window(stream: 1, 65536) + Yamux.data(stream: 4, Array(response[half...])) + Yamux.fin(stream: 4))
        // Then the unary answer and trailers.
        let reply = s.server.encode(BlockEncoder.responseHeaders)
        let trailers = s.server.encode(BlockEncoder.trailers(status: 0))
        s.send(s2c, Yamux.data(stream: 1, Frames.headers(stream: 1, block: reply) + Frames.data(stream: 1, Frames.message([])) + Frames.headers(stream: 1, block: trailers, endStream: true)))
        s.send(c2s, Yamux.ping(7))
        s.send(s2c, Yamux.ping(7, ack: true))
        return s
    }
}

@Suite("BackchannelDecoder")
struct BackchannelDecoderTests {
    @Test("a backchannel RPC is decoded from its yamux stream and carries its sidechannel's figures")
    func sidechannelJoinsItsCall() throws {
        let script = BackchannelScript.clone(packBytes: 3000)
        let outcome = decodeConnection(script.chunks, close: 99_999)
        #expect(outcome.decoder.kind == .backchannel)
        #expect(outcome.decoder.stoppedReason == nil, "\(outcome.decoder.stoppedReason ?? "")")
        #expect(outcome.records.count == 1)
        let record = try #require(outcome.records.first)
        #expect(record.path == "/gitaly.SmartHTTPService/PostUploadPackWithSidechannel")
        #expect(record.yamuxStreamID == 1)
        #expect(!record.fromGitaly)
        #expect(record.grpcStatus == 0)
        #expect(record.end == .trailers)
        #expect(!record.requestMetadata.contains { $0.name == "authorization" })
        let sidechannel = try #require(record.sidechannel)
        #expect(sidechannel.id == 4242)
        #expect(sidechannel.yamuxStreamID == 4)
        #expect(sidechannel.end == .closed)
        #expect(sidechannel.serverBands?[1] == 3000)
        #expect(sidechannel.serverBands?[2] == "Counting objects\n".utf8.count)
        #expect(sidechannel.bytesToServer == 4 + 46 + 4)
        #expect(sidechannel.clientDoneTime != nil)
        #expect(sidechannel.endTime > sidechannel.openTime)
        // Times each way (the script's chunks: Gitaly opens, the client answers "ok" + request, the client's FIN,
        // the answer in two halves).
        let magic = Array("sidechannel".utf8)
        let open = try #require(
            script.chunks.firstIndex { chunk in
                chunk.direction == .serverToClient
                    && chunk.bytes.indices.contains { chunk.bytes[$0...].starts(with: magic) }
            })
        #expect(sidechannel.lastToServerTime == script.chunks[open + 1].time)
        #expect(sidechannel.clientDoneTime == script.chunks[open + 1].time)
        #expect(sidechannel.firstToClientTime == script.chunks[open + 3].time)
        #expect(sidechannel.lastToClientTime == script.chunks[open + 4].time)
        #expect(outcome.decoder.sidechannels == 1)
        // The whole connection is counted, magic included.
        let c2s = script.chunks.filter { $0.direction == .clientToServer }.reduce(0) { $0 + $1.bytes.count }
        #expect(outcome.decoder.bytesToServer == c2s)
    }

    @Test("decoding does not depend on how the bytes are split (every byte boundary)")
    func everySplitGivesTheSameRecord() throws {
        let script = BackchannelScript.clone(packBytes: 1500)
        let whole = decodeConnection(script.chunks, close: 99_999)
        let reference = try #require(whole.records.first)
        let total = script.chunks.reduce(0) { $0 + $1.bytes.count }
        for cut in 1..<total {
            let outcome = decodeConnection(pieces(of: script.chunks, cutAt: [cut]), close: 99_999)
            #expect(outcome.records.count == 1, "cut at \(cut)")
            guard let record = outcome.records.first else { continue }
            #expect(record.sidechannel == reference.sidechannel, "cut at \(cut)")
            #expect(record.responseBytes == reference.responseBytes && record.grpcStatus == reference.grpcStatus, "cut at \(cut)")
        }
        let bytewise = decodeConnection(pieces(of: script.chunks, cutAt: Array(1..<total)), close: 99_999)
        #expect(bytewise.records.first?.sidechannel == reference.sidechannel)
    }

    @Test("a call made by Gitaly on the reverse session is marked as coming from Gitaly")
    func reverseSessionCall() throws {
        var s = BackchannelScript()
        s.send(.clientToServer, Array("backchannel".utf8))
        s.send(.serverToClient, Yamux.open(stream: 2) + Yamux.data(stream: 2, Frames.preface + Frames.settings()))
        let vote = s.reverseClient.encode(BlockEncoder.request(path: "/gitaly.RefTransaction/VoteTransaction"))
        s.send(.serverToClient, Yamux.data(stream: 2, Frames.headers(stream: 1, block: vote) + Frames.data(stream: 1, Frames.message([1, 2, 3]), endStream: true)))
        let answer = s.reverseServer.encode(BlockEncoder.responseHeaders + BlockEncoder.trailers(status: 0))
        s.send(.clientToServer, Yamux.data(stream: 2, Frames.settings() + Frames.headers(stream: 1, block: answer, endStream: true)))
        let outcome = decodeConnection(s.chunks)
        let record = try #require(outcome.records.first)
        #expect(record.path == "/gitaly.RefTransaction/VoteTransaction")
        #expect(record.fromGitaly)
        #expect(record.yamuxStreamID == 2)
        #expect(record.end == .trailersOnly)
    }

    @Test("a reset sidechannel still ends its call, which is emitted once")
    func resetSidechannel() throws {
        var s = BackchannelScript.clone()
        // Replace the orderly end: drop everything after the sidechannel opened, then reset it and close.
        s.chunks = Array(s.chunks.prefix(8))
        s.send(.clientToServer, Yamux.rst(stream: 4))
        let outcome = decodeConnection(s.chunks, close: 99_999)
        #expect(outcome.records.count == 1)
        let record = try #require(outcome.records.first)
        #expect(record.sidechannel?.end == .reset(by: .clientToServer))
        #expect(record.end == .connectionLost)
    }

    @Test(
        "malformed yamux frames stop decoding with a reason and every byte is still counted",
        arguments: [
            ("bad version", Yamux.frame(type: 1, flags: 1, stream: 1, length: 0, version: 1), "version"),
            ("unknown type", Yamux.frame(type: 9, stream: 1, length: 0), "unknown type"),
            ("length beyond limit", Yamux.frame(type: 0, flags: 1, stream: 1, length: 64 * 1024 * 1024), "exceeds"),
            ("data on unknown stream", Yamux.data(stream: 7, [1, 2, 3]), "unknown stream"),
            ("stream opened twice", Yamux.open(stream: 1) + Yamux.open(stream: 1), "opened twice"),
            ("data on stream 0", Yamux.frame(type: 0, stream: 0, length: 1) + [0], "stream 0"),
            ("ping on a stream", Yamux.frame(type: 2, stream: 3, length: 1), "ping"),
            ("go-away on a stream", Yamux.frame(type: 3, stream: 1, length: 0), "go-away on stream 1"),
            ("data after FIN", Yamux.open(stream: 1) + Yamux.fin(stream: 1) + Yamux.data(stream: 1, [1]), "after its sender's FIN"),
        ])
    func malformedFrames(name: String, frames: [UInt8], reason: String) {
        let chunks = [
            Chunk(direction: .clientToServer, bytes: Array("backchannel".utf8) + frames, time: 1),
            Chunk(direction: .serverToClient, bytes: [1, 2, 3], time: 2),
        ]
        let outcome = decodeConnection(chunks, close: 3)
        #expect(outcome.decoder.kind == .backchannel)
        #expect(outcome.decoder.stoppedReason?.contains(reason) == true, "\(name): \(outcome.decoder.stoppedReason ?? "nil")")
        #expect(outcome.decoder.bytesToServer == 11 + frames.count)
        #expect(outcome.decoder.bytesToClient == 3)
    }

    @Test("random bytes after the backchannel magic never crash the decoder")
    func randomInputNeverCrashes() {
        var generator = SplitMix(seed: 7)
        for _ in 0..<2000 {
            let length = Int.random(in: 0..<200, using: &generator)
            var bytes = Array("backchannel".utf8)
            bytes += (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            let outcome = decodeConnection([Chunk(direction: .clientToServer, bytes: bytes, time: 1)], close: 2)
            #expect(outcome.decoder.bytesToServer == bytes.count)
        }
        // Mutations of a valid script.
        let script = BackchannelScript.clone(packBytes: 500)
        for _ in 0..<500 {
            var chunks = script.chunks
            let i = Int.random(in: 1..<chunks.count, using: &generator)
            if !chunks[i].bytes.isEmpty {
                let j = Int.random(in: 0..<chunks[i].bytes.count, using: &generator)
                chunks[i].bytes[j] ^= UInt8.random(in: 1...255, using: &generator)
            }
            let outcome = decodeConnection(chunks, close: 99_999)
            #expect(outcome.records.count <= 1)
        }
    }

    @Test(
        "a go-away from Gitaly (normal, protocol or internal error) leaves the open streams decoding: the call and its sidechannel end as they would without it",
        arguments: [UInt32(0), 1, 2])
    func goAwayKeepsOpenStreams(code: UInt32) throws {
        let plain = BackchannelScript.clone(packBytes: 1500)
        let reference = try #require(decodeConnection(plain.chunks, close: 99_999).records.first)
        // Gitaly says go away once the call's request is in, in the same write as the sidechannel it opens next
        // (the sender of a go-away may still open streams; only its peer may not). The frame's length field is
        // the code: nothing of the frames after it is payload.
        var script = plain
        let opensSidechannel = Yamux.open(stream: 4)
        let at = try #require(
            script.chunks.firstIndex { $0.direction == .serverToClient && $0.bytes.starts(with: opensSidechannel) })
        script.chunks[at].bytes = Yamux.goAway(code) + script.chunks[at].bytes
        let total = script.chunks.reduce(0) { $0 + $1.bytes.count }
        for cuts in [[]] + (1..<total).map({ [$0] }) {
            let outcome = decodeConnection(pieces(of: script.chunks, cutAt: cuts), close: 99_999)
            #expect(outcome.decoder.stoppedReason == nil, "cut at \(cuts): \(outcome.decoder.stoppedReason ?? "")")
            #expect(outcome.records.count == 1, "cut at \(cuts)")
            guard let record = outcome.records.first else { continue }
            #expect(record.path == reference.path, "cut at \(cuts)")
            #expect(record.end == .trailers && record.grpcStatus == 0, "cut at \(cuts)")
            #expect(record.responseBytes == reference.responseBytes, "cut at \(cuts)")
            #expect(record.sidechannel == reference.sidechannel, "cut at \(cuts)")
            #expect(outcome.decoder.sidechannels == 1, "cut at \(cuts)")
            let s2c = script.chunks.filter { $0.direction == .serverToClient }.reduce(0) { $0 + $1.bytes.count }
            #expect(outcome.decoder.bytesToClient == s2c, "cut at \(cuts): the go-away is counted like any byte")
        }
    }

    @Test("interleaved streams: two RPCs with two sidechannels keep their own figures")
    func interleavedSidechannels() throws {
        var s = BackchannelScript()
        let c2s = Direction.clientToServer, s2c = Direction.serverToClient
        s.send(c2s, Array("backchannel".utf8) + Yamux.open(stream: 1) + Yamux.data(stream: 1, Frames.preface + Frames.settings()))
        s.send(s2c, Yamux.data(stream: 1, Frames.settings()))
        for (stream, id) in [(UInt32(1), Int64(10)), (UInt32(3), Int64(20))] {
            let block = s.client.encode(BlockEncoder.request(path: "/gitaly.SSHService/SSHUploadPackWithSidechannel", extra: [("gitaly-sidechannel-id", String(id))]))
            s.send(c2s, Yamux.data(stream: 1, Frames.headers(stream: stream, block: block) + Frames.data(stream: stream, Frames.message([]), endStream: true)))
        }
        for (yamux, id) in [(UInt32(2), Int64(10)), (UInt32(4), Int64(20))] {
            s.send(s2c, Yamux.open(stream: yamux) + Yamux.data(stream: yamux, Array("sidechannel".utf8) + Frames.be32(0) + Frames.be32(UInt32(id))))
            s.send(c2s, Yamux.data(stream: yamux, Array("ok".utf8)))
        }
        s.send(s2c, Yamux.data(stream: 4, Yamux.pkt([1] + [UInt8](repeating: 9, count: 200))))
        s.send(s2c, Yamux.data(stream: 2, Yamux.pkt([1] + [UInt8](repeating: 9, count: 100)) + Yamux.pkt([2, 65, 66])))
        for yamux in [UInt32(2), 4] {
            s.send(s2c, Yamux.fin(stream: yamux))
            s.send(c2s, Yamux.fin(stream: yamux))
        }
        for stream in [UInt32(3), 1] {
            let block = s.server.encode(BlockEncoder.responseHeaders + BlockEncoder.trailers(status: 0))
            s.send(s2c, Yamux.data(stream: 1, Frames.headers(stream: stream, block: block, endStream: true)))
        }
        let outcome = decodeConnection(s.chunks)
        #expect(outcome.decoder.stoppedReason == nil, "\(outcome.decoder.stoppedReason ?? "")")
        #expect(outcome.records.count == 2)
        let first = try #require(outcome.records.first { $0.streamID == 1 })
        let second = try #require(outcome.records.first { $0.streamID == 3 })
        #expect(first.sidechannel?.id == 10 && first.sidechannel?.serverBands?[1] == 100 && first.sidechannel?.serverBands?[2] == 2)
        #expect(second.sidechannel?.id == 20 && second.sidechannel?.serverBands?[1] == 200)
    }
}

/// SplitMix64, for repeatable random input.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
