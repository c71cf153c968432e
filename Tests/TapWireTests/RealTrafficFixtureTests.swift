import NIOCore
import TapWire
import Testing

/// Byte streams of real grpcio calls (Fixtures/capture.py) through `ConnectionDecoder` and `HTTP2SessionDecoder`.
///
/// Expected sizes come from the protobuf encoding of the echo scenarios (Tests/Peers/proto/taptest.proto).
@Suite("Real grpcio traffic")
struct RealTrafficFixtureTests {
    private func decode(_ name: String) throws -> (WireFixture, ConnectionOutcome) {
        let fixture = try WireFixture.load(name)
        return (fixture, decodeConnection(fixture.timeline, close: 99))
    }

    private func onlyRecord(_ name: String) throws -> GRPCCallRecord {
        let (_, outcome) = try decode(name)
        #expect(outcome.records.count == 1)
        return try #require(outcome.records.first)
    }

    /// What every call the echo client makes must show: GitLab metadata kept, the token noted but gone.
    private func expectGitLabRequest(_ r: GRPCCallRecord, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(
            r.requestHeader("x-gitlab-correlation-id") == "01JTAPTESTCORRELATION0000001", sourceLocation: sourceLocation
        )
        #expect(r.requestHeader("x-gitlab-client-name") == "gitlab-workhorse", sourceLocation: sourceLocation)
        #expect(r.hadAuthorization, sourceLocation: sourceLocation)
        #expect(!r.requestMetadata.names.contains("authorization"), sourceLocation: sourceLocation)
        let everything = (r.requestMetadata + r.responseMetadata + r.trailers).map { "\($0.name)=\($0.value)" }.joined()
        #expect(!everything.contains("5e1f5e1f"), "the token's value appears nowhere", sourceLocation: sourceLocation)
        #expect(r.method == "POST", sourceLocation: sourceLocation)
        #expect(r.contentType == "application/grpc", sourceLocation: sourceLocation)
        #expect(r.requestHeader("te") == "trailers", sourceLocation: sourceLocation)
        #expect(
            r.authority?.hasSuffix(".sock") == true, "grpcio sends the percent-encoded socket path",
            sourceLocation: sourceLocation)
        #expect(r.requestMetadata.allSatisfy { !$0.name.hasPrefix(":") }, sourceLocation: sourceLocation)
    }

    @Test(
        "every fixture decodes as HTTP/2 without stopping, ends all its calls and counts every byte",
        arguments: WireFixture.names)
    func decodesCleanly(name: String) throws {
        let fixture = try WireFixture.load(name)
        let outcome = decodeConnection(fixture.timeline)
        #expect(outcome.decoder.kind == .http2)
        #expect(outcome.decoder.stoppedReason == nil)
        #expect(outcome.decoder.bytesToServer == fixture.clientToServer.count)
        #expect(outcome.decoder.bytesToClient == fixture.serverToClient.count)
        #expect(!outcome.records.isEmpty)
        var decoder = outcome.decoder
        var late: [GRPCCallRecord] = []
        decoder.close(at: 100) { late.append($0) }
        #expect(late.isEmpty, "no call is left open at the end of the capture")
    }

    @Test("the session decoder sees every frame of every fixture and leaves no call open", arguments: WireFixture.names)
    func sessionDecoderFrameCounts(name: String) throws {
        let fixture = try WireFixture.load(name)
        let outcome = decodeSession(fixture.timeline)
        #expect(outcome.error == nil)
        #expect(outcome.decoder.assembler.openCalls == 0)
        #expect(
            outcome.decoder.frameCounts.toServer
                == WireFixture.frameOffsets(in: fixture.clientToServer, skippingPreface: true).count)
        #expect(
            outcome.decoder.frameCounts.toClient
                == WireFixture.frameOffsets(in: fixture.serverToClient, skippingPreface: false).count)
        #expect(outcome.records.summaries == decodeConnection(fixture.timeline).records.summaries)
    }

    @Test("unary: path, GitLab metadata without the token, one message each way, status 0 in trailers")
    func unary() throws {
        let r = try onlyRecord("unary")
        #expect(r.streamID == 1)
        #expect(r.path == "/taptest.Echo/Unary")
        #expect(r.service == "taptest.Echo")
        #expect(r.methodName == "Unary")
        expectGitLabRequest(r)
        #expect(r.timeoutNanos == nil)
        // EchoRequest{payload: "hello gitaly-tap"} = 0x0a 0x10 + 16 bytes.
        #expect(r.requestMessages == 1)
        #expect(r.requestBytes == 18)
        #expect(r.requestWireBytes == 23)
        #expect(
            r.firstRequestMessage.map { Array($0.readableBytesView) } == [0x0A, 0x10] + Array("hello gitaly-tap".utf8))
        #expect(r.firstRequestMessageLength == 18)
        #expect(!r.firstRequestMessageCompressed)
        // EchoReply{payload: 16 bytes, received_bytes: 16, received_messages: 1} = 18 + 2 + 2.
        #expect(r.responseMessages == 1)
        #expect(r.responseBytes == 22)
        #expect(r.responseWireBytes == 27)
        #expect(r.httpStatus == 200)
        #expect(r.responseMetadata.value("x-echo-server") == "1")
        #expect(r.trailers.value("grpc-status") == "0")
        #expect(r.trailers.value("x-echo-trailer") == "done")
        #expect(r.grpcStatus == 0)
        #expect(r.end == .trailers)
        #expect(r.startTime == 1)
        #expect(r.requestEndTime == 1)
        #expect(r.firstResponseTime == 2)
        #expect(r.endTime == 2)
    }

    @Test("error: the percent-encoded grpc-message is decoded, status INVALID_ARGUMENT after one reply")
    func error() throws {
        let r = try onlyRecord("error")
        #expect(r.path == "/taptest.Echo/ServerStream")
        expectGitLabRequest(r)
        #expect(r.grpcStatus == 3)
        #expect(r.grpcMessage == "bad input: 100% wrong – ünïcode")
        let wire = try #require(r.trailers.value("grpc-message"))
        #expect(wire.contains("100%25") && wire.contains("%E2%80%93"), "trailers keep the wire form: \(wire)")
        #expect(r.responseMessages == 1)
        // EchoReply{payload: 100 bytes, received_bytes: 0, received_messages: 1} = 102 + 2.
        #expect(r.responseBytes == 104)
        #expect(r.responseMetadata.value("x-echo-server") == "1")
        #expect(r.end == .trailers)
    }

    @Test("trailers_only: a single HEADERS frame carries status, message and the server's metadata")
    func trailersOnly() throws {
        let r = try onlyRecord("trailers_only")
        expectGitLabRequest(r)
        #expect(r.end == .trailersOnly)
        #expect(r.grpcStatus == 5)
        #expect(r.grpcMessage == "no such thing")
        #expect(r.responseMetadata.isEmpty)
        #expect(r.trailers.value("x-echo-server") == "1")
        #expect(r.responseMessages == 0)
        #expect(r.httpStatus == 200)
        #expect(r.firstResponseTime == 2)
    }

    @Test("cancel: the client's RST_STREAM(CANCEL) ends the call after the first reply, without a status")
    func cancel() throws {
        let r = try onlyRecord("cancel")
        #expect(r.path == "/taptest.Echo/ServerStream")
        expectGitLabRequest(r)
        #expect(r.end == .reset(by: .clientToServer, code: 8))
        #expect(r.grpcStatus == nil)
        #expect(r.requestMessages == 1)
        #expect(r.responseMessages == 1)
        // EchoReply{payload: 1024 bytes, received_messages: 1} = 3 + 1024 + 2.
        #expect(r.responseBytes == 1029)
        #expect(r.endTime == 3)
    }

    @Test("metadata: every custom key arrives with its value; values other than grpc-message are not decoded")
    func metadata() throws {
        let r = try onlyRecord("metadata")
        expectGitLabRequest(r)
        #expect(r.requestHeader("traceparent") == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        #expect(r.requestHeader("username") == "tap-tester")
        #expect(r.requestHeader("user_id") == "42")
        #expect(r.requestHeader("gitaly-session-id") == "6f1c2a4e-9b3d-4c7e-8a5f-0d2b4c6e8f10")
        #expect(r.requestHeader("gitaly-feature-foo") == "true")
        #expect(r.requestHeader("x-tap-extra") == "percent%20kept")
        #expect(r.requestHeader("user-agent")?.hasPrefix("grpc-python/") == true)
        #expect(r.grpcStatus == 0)
    }

    @Test("server_stream_small: five replies over five DATA frames")
    func serverStream() throws {
        let r = try onlyRecord("server_stream_small")
        expectGitLabRequest(r)
        #expect(r.responseMessages == 5)
        // Reply 0: 3 + 300 + 2 (received_messages); replies 1-4 also carry `sequence`: + 2 each.
        #expect(r.responseBytes == 305 + 4 * 307)
        #expect(r.responseWireBytes == r.responseBytes + 5 * 5)
        #expect(r.end == .trailers)
        #expect(r.grpcStatus == 0)
    }

    @Test("bidi_small: four messages each way on one stream")
    func bidi() throws {
        let r = try onlyRecord("bidi_small")
        #expect(r.path == "/taptest.Echo/Bidi")
        expectGitLabRequest(r)
        #expect(r.requestMessages == 4)
        #expect(r.requestBytes == 4 * 203)
        #expect(r.firstRequestMessageLength == 203)
        #expect(r.responseMessages == 4)
        #expect(r.grpcStatus == 0)
    }

    @Test("client_stream_small: four request messages, the last one zero-length, one reply")
    func clientStream() throws {
        let r = try onlyRecord("client_stream_small")
        #expect(r.path == "/taptest.Echo/ClientStream")
        expectGitLabRequest(r)
        #expect(r.requestMessages == 4)
        #expect(r.requestBytes == 3 * 102)
        #expect(r.requestWireBytes == 3 * 107 + 5)
        #expect(r.responseMessages == 1)
        #expect(r.grpcStatus == 0)
    }

    @Test("several_calls: three calls on one connection, later header blocks leaning on the HPACK dynamic table")
    func severalCalls() throws {
        let (fixture, outcome) = try decode("several_calls")
        let headerSizes = WireFixture.frameOffsets(in: fixture.clientToServer, skippingPreface: true)
            .filter { fixture.clientToServer[$0 + 3] == 0x1 }
            .map { Int(fixture.clientToServer[$0 + 1]) << 8 | Int(fixture.clientToServer[$0 + 2]) }
        #expect(headerSizes.count == 3)
        // The token is sent literally every time (grpcio never indexes it); everything else comes from the table.
        #expect(
            headerSizes[1] * 3 < headerSizes[0] * 2 && headerSizes[2] * 3 < headerSizes[0] * 2,
            "dynamic table in use: \(headerSizes)")
        #expect(outcome.records.map(\.streamID) == [1, 3, 5])
        for r in outcome.records { expectGitLabRequest(r) }
        #expect(outcome.records.map(\.end) == [.trailers, .trailers, .trailersOnly])
        #expect(outcome.records.map(\.grpcStatus) == [0, 0, 5])
        #expect(outcome.records[2].grpcMessage == "gone")
        let timeout = try #require(outcome.records[1].timeoutNanos)
        #expect(timeout > 25_000_000_000 && timeout <= 31_000_000_000)
        #expect(outcome.records[1].requestHeader("grpc-timeout") != nil)
        #expect(outcome.records[0].timeoutNanos == nil)
        #expect(
            outcome.records.map { $0.firstRequestMessage.map { Array($0.readableBytesView) } }[0] == [0x0A, 3]
                + Array("one".utf8))
    }

    @Test("feeding each direction whole, client first, still gives the cancelled call its reset")
    func directionsOneAfterTheOther() throws {
        let fixture = try WireFixture.load("cancel")
        let outcome = decodeConnection([
            Chunk(direction: .clientToServer, bytes: fixture.clientToServer, time: 1),
            Chunk(direction: .serverToClient, bytes: fixture.serverToClient, time: 2),
        ])
        #expect(outcome.decoder.stoppedReason == nil)
        #expect(outcome.records.map(\.end) == [.reset(by: .clientToServer, code: 8)])
        #expect(outcome.records.first?.responseMessages == 0, "the server's reply came after the reset in this order")
    }
}
