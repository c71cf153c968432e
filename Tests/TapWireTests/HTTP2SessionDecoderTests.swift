import NIOCore
import NIOHPACK
import TapWire
import Testing

/// Decodes a synthetic session and fails the test on a decoding error.
private func decodeCleanly(
    _ chunks: [Chunk], sourceLocation: SourceLocation = #_sourceLocation
) -> SessionOutcome {
    let outcome = decodeSession(chunks)
    #expect(outcome.error == nil, sourceLocation: sourceLocation)
    return outcome
}

@Suite("HTTP2SessionDecoder")
struct HTTP2SessionDecoderTests {
    // MARK: Header blocks

    @Test("a header block split over HEADERS and CONTINUATION frames (one of them empty) decodes as one block")
    func continuationFrames() throws {
        var s = SyntheticSession()
        let block = s.client.encode(BlockEncoder.request(extra: [("x-long", String(repeating: "v", count: 300))]))
        s.send(
            .clientToServer,
            Frames.frame(type: 0x1, flags: Frames.endStream, stream: 1, Array(block[..<10]))
                + Frames.continuation(stream: 1, Array(block[10..<100]), endHeaders: false)
                + Frames.continuation(stream: 1, [], endHeaders: false)
                + Frames.continuation(stream: 1, Array(block[100...]), endHeaders: true))
        s.send(.serverToClient, Frames.headers(stream: 1, block: s.server.encode(BlockEncoder.responseHeaders)))
        let trailers = s.server.encode(BlockEncoder.trailers(status: 0))
        s.send(
            .serverToClient,
            Frames.frame(type: 0x1, flags: Frames.endStream, stream: 1, Array(trailers[..<1]))
                + Frames.continuation(stream: 1, Array(trailers[1...]), endHeaders: true))
        let outcome = decodeCleanly(s.chunks)
        let r = try #require(outcome.records.first)
        #expect(outcome.records.count == 1)
        #expect(r.path == "/gitaly.RepositoryService/RepositoryExists")
        #expect(r.requestHeader("x-long")?.count == 300)
        #expect(r.hadAuthorization)
        #expect(r.requestEndTime == r.startTime, "END_STREAM on the HEADERS frame counts once the block is complete")
        #expect(r.end == .trailers)
        #expect(r.grpcStatus == 0)
    }

    @Test("PADDED HEADERS and PADDED DATA: padding is neither header block nor message bytes")
    func paddedFrames() throws {
        var s = SyntheticSession()
        let block = s.client.encode(BlockEncoder.request())
        s.send(
            .clientToServer,
            Frames.frame(
                type: 0x1, flags: Frames.padded | Frames.endHeaders, stream: 1,
                [7] + block + Array(repeating: 0xEE, count: 7)))
        let content = Frames.message([1, 2, 3, 4])
        s.send(
            .clientToServer,
            Frames.frame(
                type: 0x0, flags: Frames.padded | Frames.endStream, stream: 1,
                [200] + content + Array(repeating: 0xEE, count: 200)))
        // Padding that takes the whole frame: no header block bytes at all would be invalid, so pad a response DATA.
        s.send(.serverToClient, Frames.headers(stream: 1, block: s.server.encode(BlockEncoder.responseHeaders)))
        s.send(.serverToClient, Frames.frame(type: 0x0, flags: Frames.padded, stream: 1, [3, 0, 0, 0]))
        s.send(.serverToClient, Frames.frame(type: 0x0, flags: Frames.padded, stream: 1, [0] + Frames.message([9])))
        s.send(
            .serverToClient,
            Frames.headers(stream: 1, block: s.server.encode(BlockEncoder.trailers(status: 0)), endStream: true))
        let outcome = decodeCleanly(s.chunks)
        let r = try #require(outcome.records.first)
        #expect(r.requestMessages == 1)
        #expect(r.requestBytes == 4)
        #expect(r.requestWireBytes == 9)
        #expect(r.responseMessages == 1)
        #expect(r.responseWireBytes == 6)
        #expect(r.requestEndTime != nil)
        #expect(r.end == .trailers)
    }

    @Test("HEADERS with the PRIORITY flag (alone and with PADDED) skip the 5 priority bytes")
    func priorityFlag() throws {
        var s = SyntheticSession()
        let priority: [UInt8] = [0x80, 0, 0, 0, 0xFF]
        let b1 = s.client.encode(BlockEncoder.request(path: "/p.S/One"))
        s.send(
            .clientToServer,
            Frames.frame(
                type: 0x1, flags: Frames.priority | Frames.endHeaders | Frames.endStream, stream: 1, priority + b1))
        let b3 = s.client.encode(BlockEncoder.request(path: "/p.S/Two"))
        s.send(
            .clientToServer,
            Frames.frame(
                type: 0x1, flags: Frames.priority | Frames.padded | Frames.endHeaders | Frames.endStream, stream: 3,
                [2] + priority + b3 + [0, 0]))
        s.send(.clientToServer, Frames.frame(type: 0x2, stream: 3, [0, 0, 0, 1, 16]))
        s.send(
            .serverToClient,
            Frames.headers(stream: 1, block: s.server.encode(BlockEncoder.trailers(status: 0)), endStream: true))
        s.send(
            .serverToClient,
            Frames.headers(stream: 3, block: s.server.encode(BlockEncoder.trailers(status: 0)), endStream: true))
        let outcome = decodeCleanly(s.chunks)
        #expect(outcome.records.map(\.path) == ["/p.S/One", "/p.S/Two"])
        #expect(outcome.records.allSatisfy { $0.end == .trailersOnly })
    }

    // MARK: HPACK dynamic table

    @Test("after the server's SETTINGS_HEADER_TABLE_SIZE the client's encoder may grow its table, across several calls")
    func dynamicTableSizeUpdate() throws {
        var s = SyntheticSession()
        s.send(.serverToClient, Frames.settings([(0x1, 65536)]))
        s.send(.clientToServer, Frames.settingsAck())
        try s.client.encoder.setDynamicTableSize(65536)
        // An 8000-byte entry does not fit a 4096-byte table: only the grown table lets later blocks index it.
        let big = String(repeating: "g", count: 8000)
        for stream: UInt32 in [1, 3, 5] {
            s.request(stream: stream, extra: [("x-big", big)], messages: [[UInt8(stream)]])
            s.response(stream: stream, messages: [[1, 2]])
        }
        let headerFrames = s.chunks.filter {
            $0.direction == .clientToServer && $0.bytes.count > 9 && $0.bytes[3] == 0x1
        }
        #expect(headerFrames.count == 3)
        #expect(headerFrames[1].bytes.count < 40, "the second call's headers are all indexed")
        let outcome = decodeCleanly(s.chunks)
        #expect(outcome.records.map(\.streamID) == [1, 3, 5])
        #expect(
            outcome.records.allSatisfy { $0.requestHeader("x-big") == big && $0.hadAuthorization && $0.grpcStatus == 0 }
        )
    }

    @Test("a SETTINGS_HEADER_TABLE_SIZE sent by the client does not let the client's own encoder grow its table")
    func tableSizeFromWrongDirection() {
        var s = SyntheticSession()
        s.send(.clientToServer, Frames.settings([(0x1, 65536)]))
        try! s.client.encoder.setDynamicTableSize(65536)
        s.request(stream: 1)
        let outcome = decodeSession(s.chunks)
        #expect(outcome.error?.reason.hasPrefix("HPACK decoding failed on stream 1") == true)
    }

    @Test("the server's encoder may grow its table after the client's SETTINGS_HEADER_TABLE_SIZE")
    func serverTableGrows() throws {
        var s = SyntheticSession()
        s.send(.clientToServer, Frames.settings([(0x1, 1 << 16)]))
        try s.server.encoder.setDynamicTableSize(1 << 16)
        let big = String(repeating: "t", count: 6000)
        for stream: UInt32 in [1, 3] {
            s.request(stream: stream)
            s.send(
                .serverToClient,
                Frames.headers(stream: stream, block: s.server.encode(BlockEncoder.responseHeaders + [("x-srv", big)])))
            s.send(
                .serverToClient,
                Frames.headers(
                    stream: stream, block: s.server.encode(BlockEncoder.trailers(status: 0)), endStream: true))
        }
        let outcome = decodeCleanly(s.chunks)
        #expect(outcome.records.map { $0.responseMetadata.value("x-srv") } == [big, big])
    }

    @Test("a SETTINGS_HEADER_TABLE_SIZE above 16 MiB is capped, and a table that size still decodes")
    func tableSizeCap() throws {
        var s = SyntheticSession()
        s.send(.serverToClient, Frames.settings([(0x1, 0xFFFF_FFFF)]))
        try s.client.encoder.setDynamicTableSize(1 << 24)
        s.request(stream: 1)
        s.response(stream: 1)
        let outcome = decodeCleanly(s.chunks)
        #expect(outcome.records.count == 1)
    }

    @Test("an encoder that shrinks its table to 0 needs no SETTINGS and keeps decoding")
    func tableShrinks() throws {
        var s = SyntheticSession()
        s.request(stream: 1)
        s.response(stream: 1)
        try s.client.encoder.setDynamicTableSize(0)
        s.request(stream: 3)
        s.response(stream: 3)
        let outcome = decodeCleanly(s.chunks)
        #expect(outcome.records.map(\.streamID) == [1, 3])
        #expect(outcome.records.allSatisfy { $0.requestHeader("x-gitlab-correlation-id") == "01JCORRELATION" })
    }

    @Test("a PUSH_PROMISE opens no call but its header block still feeds the HPACK table of later blocks")
    func pushPromiseKeepsHPACKInSync() throws {
        var s = SyntheticSession()
        s.request(stream: 1)
        let promised = s.server.encode([(":method", "GET"), (":path", "/pushed"), ("x-pushed", "indexed-value")])
        s.send(.serverToClient, Frames.frame(type: 0x5, flags: Frames.endHeaders, stream: 1, Frames.be32(2) + promised))
        // Same field again: the server's encoder now sends it as an index into its dynamic table.
        s.send(
            .serverToClient,
            Frames.headers(
                stream: 1, block: s.server.encode(BlockEncoder.responseHeaders + [("x-pushed", "indexed-value")])))
        s.send(.serverToClient, Frames.headers(stream: 2, block: s.server.encode(BlockEncoder.responseHeaders)))
        s.send(
            .serverToClient,
            Frames.headers(stream: 1, block: s.server.encode(BlockEncoder.trailers(status: 0)), endStream: true))
        let outcome = decodeCleanly(s.chunks)
        #expect(outcome.records.count == 1)
        #expect(outcome.records.first?.responseMetadata.value("x-pushed") == "indexed-value")
    }

    // MARK: gRPC messages over DATA frames

    @Test("a message split across DATA frames and several messages in one DATA frame are all counted")
    func messagesAcrossFrames() throws {
        var s = SyntheticSession()
        s.request(stream: 1, messages: [], endRequest: false)
        let large = Frames.message(Array(repeating: 0x33, count: 1000))
        s.send(.clientToServer, Frames.data(stream: 1, Array(large[..<2])))  // prefix split too
        s.send(.clientToServer, Frames.data(stream: 1, Array(large[2..<600])))
        s.send(
            .clientToServer,
            Frames.data(stream: 1, Array(large[600...]) + Frames.message([1]) + Frames.message([2, 2])))
        s.send(.clientToServer, Frames.data(stream: 1, [], endStream: true))
        s.send(.serverToClient, Frames.headers(stream: 1, block: s.server.encode(BlockEncoder.responseHeaders)))
        s.send(.serverToClient, Frames.data(stream: 1, Frames.message([5]) + Frames.message([6]) + Frames.message([7])))
        s.send(
            .serverToClient,
            Frames.headers(stream: 1, block: s.server.encode(BlockEncoder.trailers(status: 0)), endStream: true))
        let r = try #require(decodeCleanly(s.chunks).records.first)
        #expect(r.requestMessages == 3)
        #expect(r.requestBytes == 1003)
        #expect(r.requestWireBytes == 1018)
        #expect(r.firstRequestMessageLength == 1000)
        #expect(r.firstRequestMessage?.readableBytes == 1000)
        #expect(r.responseMessages == 3)
        #expect(r.responseBytes == 3)
        #expect(r.requestEndTime != nil)
    }

    @Test("zero-length messages and empty DATA frames are counted correctly")
    func zeroLengthMessages() throws {
        var s = SyntheticSession()
        s.request(stream: 1, messages: [[], [], []])
        s.send(.serverToClient, Frames.headers(stream: 1, block: s.server.encode(BlockEncoder.responseHeaders)))
        s.send(.serverToClient, Frames.data(stream: 1, []))
        s.send(.serverToClient, Frames.data(stream: 1, Frames.message([])))
        s.send(
            .serverToClient,
            Frames.headers(stream: 1, block: s.server.encode(BlockEncoder.trailers(status: 0)), endStream: true))
        let r = try #require(decodeCleanly(s.chunks).records.first)
        #expect(r.requestMessages == 3)
        #expect(r.requestBytes == 0)
        #expect(r.requestWireBytes == 15)
        #expect(r.firstRequestMessageLength == 0)
        #expect(r.responseMessages == 1)
        #expect(r.responseWireBytes == 5)
    }

    // MARK: How calls end

    @Test("a server GOAWAY with a last stream id below an open call ends that call as refused, the others go on")
    func goAwayRefuses() throws {
        var s = SyntheticSession()
        s.request(stream: 1)
        s.request(stream: 3)
        s.request(stream: 5)
        s.send(.serverToClient, Frames.goAway(lastStream: 0x7FFF_FFFF, code: 0))  // graceful: nothing refused yet
        s.send(.serverToClient, Frames.goAway(lastStream: 1, code: 0, debug: "draining"))
        s.response(stream: 1)
        let outcome = decodeCleanly(s.chunks)
        #expect(outcome.records.map(\.streamID) == [3, 5, 1])
        #expect(outcome.records.map(\.end) == [.refusedByGoAway(code: 0), .refusedByGoAway(code: 0), .trailers])
        #expect(outcome.decoder.assembler.openCalls == 0)
    }

    // Pins a decoder bug: GRPCCallAssembler stores goAwayLastStream but never reads it; the call ends .connectionLost.
    @Test("a call the client opens after the server's GOAWAY above its last stream id is refused, not left open")
    func streamOpenedAfterGoAway() throws {
        var s = SyntheticSession()
        s.request(stream: 1)
        s.send(.serverToClient, Frames.goAway(lastStream: 1, code: 0))
        // The client sent this before it read the GOAWAY; the server never processes it.
        s.request(stream: 3)
        s.response(stream: 1)
        var outcome = decodeCleanly(s.chunks)
        outcome.decoder.finish(end: .connectionLost, at: 999) { outcome.records.append($0) }
        let late = try #require(outcome.records.first { $0.streamID == 3 })
        #expect(late.end == .refusedByGoAway(code: 0))
    }

    @Test("RST_STREAM from the server ends the call as reset by the server; a later RST_STREAM(NO_ERROR) is ignored")
    func serverReset() throws {
        var s = SyntheticSession()
        s.request(stream: 1, endRequest: false)
        s.send(.serverToClient, Frames.rstStream(stream: 1, code: 0x7))
        s.request(stream: 3, endRequest: false)
        s.response(stream: 3)
        // gRPC-Go servers reset a stream the client has not half-closed after sending trailers.
        s.send(.serverToClient, Frames.rstStream(stream: 3, code: 0x0))
        let outcome = decodeCleanly(s.chunks)
        #expect(outcome.records.map(\.end) == [.reset(by: .serverToClient, code: 7), .trailers])
    }

    @Test("finish ends open calls with the given end and time")
    func finishOpenCalls() throws {
        var s = SyntheticSession()
        s.request(stream: 1)
        s.request(stream: 3)
        s.response(stream: 1)
        var outcome = decodeCleanly(s.chunks)
        outcome.decoder.finish(end: .connectionLost, at: 500) { outcome.records.append($0) }
        #expect(outcome.records.map(\.streamID) == [1, 3])
        #expect(outcome.records[1].end == .connectionLost)
        #expect(outcome.records[1].endTime == 500)
    }

    // MARK: Frames that carry no call

    @Test("unknown frame types are ignored wherever they appear, on stream 0 or on a call's stream")
    func unknownFrameTypes() throws {
        var s = SyntheticSession()
        s.send(.clientToServer, Frames.frame(type: 0xBE, flags: 0xFF, stream: 0, Array(repeating: 1, count: 30)))
        s.request(stream: 1, messages: [[1]], endRequest: false)
        s.send(.clientToServer, Frames.frame(type: 0x0A, stream: 1, [0, 0]))  // ALTSVC
        s.send(.clientToServer, Frames.frame(type: 0x10, stream: 1, []))
        s.send(.clientToServer, Frames.data(stream: 1, [], endStream: true))
        s.send(.serverToClient, Frames.frame(type: 0xFF, stream: 1, [1, 2, 3]))
        s.response(stream: 1)
        let outcome = decodeCleanly(s.chunks)
        #expect(outcome.records.count == 1)
        #expect(outcome.records.first?.requestMessages == 1)
        #expect(outcome.records.first?.end == .trailers)
    }

    @Test("PING, WINDOW_UPDATE, SETTINGS ACK and PRIORITY are passed over but counted as frames")
    func controlFramesPassedOver() {
        var s = SyntheticSession()
        s.send(
            .clientToServer,
            Frames.settingsAck() + Frames.ping() + Frames.windowUpdate(stream: 0) + Frames.windowUpdate(stream: 1))
        s.send(.serverToClient, Frames.settingsAck() + Frames.ping(ack: true) + Frames.windowUpdate(stream: 0))
        s.send(.clientToServer, Frames.frame(type: 0x2, stream: 9, [0, 0, 0, 0, 1]))
        let outcome = decodeCleanly(s.chunks)
        #expect(outcome.records.isEmpty)
        #expect(outcome.decoder.assembler.openCalls == 0)
        // client: SETTINGS, SETTINGS ACK, PING, 2 WINDOW_UPDATE, PRIORITY; server: SETTINGS, ACK, PING, WINDOW_UPDATE
        #expect(outcome.decoder.frameCounts.toServer == 6)
        #expect(outcome.decoder.frameCounts.toClient == 4)
    }

    @Test("a decoder told the preface was already consumed decodes frames from the first byte")
    func prefaceAlreadySeen() {
        var s = SyntheticSession(preface: false)
        s.request(stream: 1)
        s.response(stream: 1)
        let outcome = decodeSession(s.chunks, decoder: HTTP2SessionDecoder(clientPrefaceSeen: true))
        #expect(outcome.error == nil)
        #expect(outcome.records.count == 1)
    }

    @Test("without being told, the decoder insists on the preface")
    func prefaceRequired() {
        var s = SyntheticSession(preface: false)
        s.request(stream: 1)
        let outcome = decodeSession(s.chunks)
        #expect(outcome.error?.reason == "client did not send the HTTP/2 connection preface")
    }

    @Test("request limits given to the decoder reach its call assembler")
    func limitsPassedOn() {
        var limits = GRPCCallAssembler.Limits()
        limits.maxOpenCalls = 1
        var s = SyntheticSession()
        s.request(stream: 1)
        s.request(stream: 3)
        let outcome = decodeSession(s.chunks, decoder: HTTP2SessionDecoder(limits: limits))
        #expect(outcome.error?.reason == "more than 1 calls open at once")
    }

    // MARK: Any split of a session

    /// One session that goes through every feature above.
    static func kitchenSink() throws -> [Chunk] {
        var s = SyntheticSession()
        s.send(.serverToClient, Frames.settings([(0x1, 8192), (0x3, 100)]))
        try s.client.encoder.setDynamicTableSize(8192)
        let block = s.client.encode(BlockEncoder.request(extra: [("x-a", String(repeating: "a", count: 120))]))
        s.send(
            .clientToServer,
            Frames.frame(
                type: 0x1, flags: Frames.padded | Frames.priority, stream: 1,
                [3] + [0, 0, 0, 0, 5] + Array(block[..<20]) + [0, 0, 0])
                + Frames.continuation(stream: 1, Array(block[20...]), endHeaders: true))
        let message = Frames.message(Array(repeating: 0x44, count: 90))
        s.send(
            .clientToServer,
            Frames.frame(type: 0x0, flags: Frames.padded, stream: 1, [4] + Array(message[..<3]) + [0, 0, 0, 0]))
        s.send(
            .clientToServer,
            Frames.data(stream: 1, Array(message[3...]) + Frames.message([]) + Frames.message([1]), endStream: true))
        s.request(stream: 3, extra: [("grpc-timeout", "5S")], messages: [[3, 3]])
        s.send(.clientToServer, Frames.ping() + Frames.frame(type: 0xEE, stream: 0, [1]))
        s.request(stream: 5, messages: [[5]], endRequest: false)
        s.send(.serverToClient, Frames.ping(ack: true) + Frames.windowUpdate(stream: 0))
        s.response(stream: 1, messages: [[1, 1], []], status: 3, message: "bad%20thing")
        s.send(
            .serverToClient,
            Frames.headers(stream: 3, block: s.server.encode(BlockEncoder.trailers(status: 5)), endStream: true))
        s.send(.clientToServer, Frames.rstStream(stream: 5, code: 8))
        s.request(stream: 7)
        s.request(stream: 9)
        s.send(.serverToClient, Frames.goAway(lastStream: 7, code: 0))
        s.response(stream: 7, messages: [[7]])
        return s.chunks
    }

    @Test("a session with every feature gives the same calls fed whole, in two pieces at every offset, or byte by byte")
    func everySplitOfSyntheticSession() throws {
        let chunks = try Self.kitchenSink()
        let reference = decodeCleanly(chunks).records.summaries
        #expect(reference.map(\.streamID) == [1, 3, 5, 9, 7])
        #expect(
            reference.map(\.end) == [
                .trailers, .trailersOnly, .reset(by: .clientToServer, code: 8), .refusedByGoAway(code: 0), .trailers,
            ])
        #expect(reference[0].requestMessages == 3)
        #expect(reference[0].grpcMessage == "bad thing")
        #expect(reference[1].timeoutNanos == 5_000_000_000)
        let total = chunks.reduce(0) { $0 + $1.bytes.count }
        for cut in 0...total {
            let outcome = decodeSession(pieces(of: chunks, cutAt: [cut]))
            #expect(outcome.error == nil)
            #expect(outcome.records.summaries == reference, "cut at \(cut)")
        }
        let bytewise = decodeSession(pieces(of: chunks, cutAt: Array(0...total)))
        #expect(bytewise.records.summaries == reference)
    }
}
