import NIOCore
import TapWire
import Testing

private func feed(_ decoder: inout ConnectionDecoder, _ bytes: [UInt8], _ direction: Direction, at time: UInt64 = 1)
    -> [GRPCCallRecord]
{
    var records: [GRPCCallRecord] = []
    decoder.feed(ByteBuffer(bytes: bytes), direction: direction, at: time) { records.append($0) }
    return records
}

@Suite("ConnectionDecoder")
struct ConnectionDecoderTests {
    // MARK: Sniffing

    @Test("the HTTP/2 preface makes the connection .http2, decided on its 11th byte")
    func sniffHTTP2() {
        var decoder = ConnectionDecoder()
        let preface = HTTP2Preface.bytes
        for i in 0..<10 {
            _ = feed(&decoder, [preface[i]], .clientToServer)
            #expect(decoder.kind == .undetermined, "after \(i + 1) bytes")
        }
        _ = feed(&decoder, Array(preface[10...]) + Frames.settings(), .clientToServer)
        #expect(decoder.kind == .http2)
        #expect(decoder.isDecoding)
        #expect(decoder.stoppedReason == nil)
    }

    @Test("`backchannel` makes the connection .backchannel, decided on its 11th byte")
    func sniffBackchannel() {
        var decoder = ConnectionDecoder()
        let magic = Array("backchannel".utf8)
        _ = feed(&decoder, Array(magic[..<10]), .clientToServer)
        #expect(decoder.kind == .undetermined)
        let records = feed(&decoder, [magic[10]], .clientToServer)
        #expect(decoder.kind == .backchannel)
        #expect(decoder.isDecoding)
        #expect(decoder.stoppedReason == nil)
        #expect(records.isEmpty)
        #expect(decoder.bytesToServer == 11)
    }

    @Test(
        "any other first bytes make the connection .opaque as soon as they match no known magic",
        arguments: [
            ("G", 1), ("GET / HTTP/1.1\r\n", 16), ("PRI * HTTPS", 11), ("PRX", 3), ("backchannem", 11),
            ("\u{16}\u{3}\u{1}", 3),
        ])
    func sniffOpaque(prefix: String, count: Int) {
        var decoder = ConnectionDecoder()
        let bytes = Array(prefix.utf8)
        #expect(bytes.count == count)
        var decidedAt: Int?
        for (i, byte) in bytes.enumerated() {
            _ = feed(&decoder, [byte], .clientToServer)
            if decoder.kind != .undetermined, decidedAt == nil { decidedAt = i + 1 }
        }
        #expect(decoder.kind == .opaque)
        #expect(!decoder.isDecoding)
        #expect(decoder.stoppedReason == nil, "opaque is not an error")
        let firstMismatch = Array(zip(bytes, HTTP2Preface.bytes)).firstIndex { $0 != $1 }.map { $0 + 1 } ?? 0
        let firstMismatchBackchannel =
            Array(zip(bytes, Array("backchannel".utf8))).firstIndex { $0 != $1 }.map { $0 + 1 } ?? 0
        #expect(decidedAt == max(firstMismatch, firstMismatchBackchannel))
    }

    @Test("only the first 11 bytes decide: `PRI * HTTP/1.1` is taken for HTTP/2 and then fails on the preface")
    func elevenBytesDecide() {
        var decoder = ConnectionDecoder()
        _ = feed(&decoder, Array("PRI * HTTP/1.1\r\n\r\n".utf8), .clientToServer)
        #expect(decoder.kind == .http2)
        #expect(decoder.stoppedReason == "client did not send the HTTP/2 connection preface")
    }

    @Test("fewer than 11 bytes that could still be a preface leave the connection .undetermined")
    func undetermined() {
        for prefix in ["PRI * HTTP", "backchanne", "", "P", "b"] {
            var decoder = ConnectionDecoder()
            _ = feed(&decoder, Array(prefix.utf8), .clientToServer)
            #expect(decoder.kind == .undetermined, "\(prefix)")
            #expect(decoder.isDecoding)
            #expect(decoder.bytesToServer == prefix.utf8.count)
            var records: [GRPCCallRecord] = []
            decoder.close(at: 5) { records.append($0) }
            #expect(records.isEmpty)
        }
    }

    @Test("bytes the server sends first are held, not decoded, until the client's 11 bytes decide the kind")
    func serverSpeaksFirstHeld() {
        var decoder = ConnectionDecoder()
        // Bytes that are invalid HTTP/2 from the server: decoding them at once would stop the decoder.
        _ = feed(&decoder, Frames.frame(type: 0x4, stream: 0, [1, 2, 3, 4, 5]), .serverToClient)
        #expect(decoder.kind == .undetermined)
        #expect(decoder.stoppedReason == nil)
        _ = feed(&decoder, Array(HTTP2Preface.bytes[..<6]), .clientToServer)
        #expect(decoder.stoppedReason == nil)
        _ = feed(&decoder, Array(HTTP2Preface.bytes[6...]), .clientToServer)
        #expect(decoder.kind == .http2)
        #expect(decoder.stoppedReason == "malformed SETTINGS frame (length 5, stream 0)")
        #expect(decoder.bytesToClient == 14)
        #expect(decoder.bytesToServer == 24)
    }

    @Test(
        "held server bytes are decoded in arrival order once the kind is known (SETTINGS before the client's headers)")
    func serverSpeaksFirstReplayed() throws {
        var session = SyntheticSession(preface: false)
        session.chunks = []
        session.send(.serverToClient, Frames.settings([(0x1, 32768)]))
        try session.client.encoder.setDynamicTableSize(32768)
        session.send(.clientToServer, HTTP2Preface.bytes + Frames.settings())
        session.request(stream: 1, extra: [("x-big", String(repeating: "b", count: 6000))])
        session.request(stream: 3, extra: [("x-big", String(repeating: "b", count: 6000))])
        session.response(stream: 1)
        session.response(stream: 3)
        let outcome = decodeConnection(session.chunks)
        #expect(outcome.decoder.stoppedReason == nil)
        #expect(outcome.records.map(\.streamID) == [1, 3])
        #expect(outcome.records.allSatisfy { $0.requestHeader("x-big")?.count == 6000 })
    }

    @Test("held server bytes are dropped when the client turns out opaque")
    func serverFirstThenOpaque() {
        var decoder = ConnectionDecoder()
        _ = feed(&decoder, Array(repeating: 0x55, count: 1000), .serverToClient)
        _ = feed(&decoder, Array("SSH-2.0-OpenSSH".utf8), .clientToServer)
        #expect(decoder.kind == .opaque)
        #expect(decoder.stoppedReason == nil)
        _ = feed(&decoder, Array(repeating: 0x55, count: 10), .serverToClient)
        #expect(decoder.bytesToClient == 1010)
        #expect(decoder.bytesToServer == 15)
    }

    @Test("a server that sends more than 1 MiB before the client's first 11 bytes stops the decoder")
    func serverFloodBeforeClient() {
        var decoder = ConnectionDecoder()
        for _ in 0..<16 { _ = feed(&decoder, Array(repeating: 0, count: 65536), .serverToClient) }
        #expect(decoder.stoppedReason == nil, "exactly 1 MiB is still held")
        _ = feed(&decoder, [0], .serverToClient)
        #expect(decoder.stoppedReason == "server sent over 1 MiB before the client's first 11 bytes")
        _ = feed(&decoder, HTTP2Preface.bytes, .clientToServer)
        #expect(decoder.kind == .undetermined, "a stopped decoder sniffs no more")
        #expect(decoder.bytesToClient == (1 << 20) + 1)
        #expect(decoder.bytesToServer == 24)
    }

    @Test("empty buffers change nothing")
    func emptyBuffers() {
        var decoder = ConnectionDecoder()
        _ = feed(&decoder, [], .clientToServer)
        _ = feed(&decoder, [], .serverToClient)
        #expect(decoder.kind == .undetermined)
        _ = feed(&decoder, HTTP2Preface.bytes, .clientToServer)
        _ = feed(&decoder, [], .clientToServer)
        #expect(decoder.kind == .http2)
        #expect(decoder.stoppedReason == nil)
    }

    // MARK: Ending

    @Test("close ends open calls as .connectionLost at the close time; finished calls are not repeated")
    func closeMidCall() {
        var s = SyntheticSession()
        s.request(stream: 1)
        s.response(stream: 1)
        s.request(stream: 3, messages: [[1, 2]], endRequest: false)
        s.send(.serverToClient, Frames.headers(stream: 3, block: s.server.encode(BlockEncoder.responseHeaders)))
        let outcome = decodeConnection(s.chunks, close: 777)
        #expect(outcome.records.map(\.streamID) == [1, 3])
        #expect(outcome.records.map(\.end) == [.trailers, .connectionLost])
        #expect(outcome.records[1].endTime == 777)
        #expect(outcome.records[1].requestMessages == 1)
        #expect(outcome.records[1].requestEndTime == nil)
        var decoder = outcome.decoder
        var again: [GRPCCallRecord] = []
        decoder.close(at: 778) { again.append($0) }
        decoder.feed(ByteBuffer(bytes: Frames.ping()), direction: .clientToServer, at: 779) { again.append($0) }
        #expect(again.isEmpty)
        #expect(
            decoder.bytesToServer == s.chunks.filter { $0.direction == .clientToServer }.reduce(0) {
                $0 + $1.bytes.count
            } + 17)
    }

    @Test("stop ends open calls as .decodingStopped with the reason; only the first reason is kept")
    func explicitStop() {
        var s = SyntheticSession()
        s.request(stream: 1)
        var outcome = decodeConnection(s.chunks)
        var records: [GRPCCallRecord] = []
        outcome.decoder.stop("tap is shutting down", at: 9) { records.append($0) }
        outcome.decoder.stop("second reason", at: 10) { records.append($0) }
        #expect(outcome.decoder.stoppedReason == "tap is shutting down")
        #expect(!outcome.decoder.isDecoding)
        #expect(records.map(\.end) == [.decodingStopped("tap is shutting down")])
        outcome.decoder.close(at: 11) { records.append($0) }
        #expect(records.count == 1)
    }

    @Test("bytes are counted per direction whatever the kind and after decoding stopped")
    func byteCounting() {
        var decoder = ConnectionDecoder()
        _ = feed(&decoder, HTTP2Preface.bytes, .clientToServer)
        _ = feed(&decoder, Frames.data(stream: 0, [1]), .clientToServer)
        #expect(decoder.stoppedReason == "DATA frame on stream 0")
        _ = feed(&decoder, Array(repeating: 1, count: 1000), .clientToServer)
        _ = feed(&decoder, Array(repeating: 1, count: 33), .serverToClient)
        #expect(decoder.bytesToServer == 24 + 10 + 1000)
        #expect(decoder.bytesToClient == 33)
    }
}
