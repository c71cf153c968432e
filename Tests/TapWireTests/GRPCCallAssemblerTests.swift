import NIOCore
import NIOHPACK
import TapWire
import Testing

/// Drives a `GRPCCallAssembler` directly with decoded header lists and DATA pieces.
private struct Harness {
    var assembler: GRPCCallAssembler
    var records: [GRPCCallRecord] = []

    init(limits: GRPCCallAssembler.Limits = .init()) {
        assembler = GRPCCallAssembler(limits: limits)
    }

    mutating func headers(
        _ fields: [(String, String)], stream: UInt32, _ direction: Direction, endStream: Bool = false, at time: UInt64
    ) throws {
        try assembler.headers(
            HeaderBlock(fields), streamID: stream, direction: direction, endStream: endStream, at: time
        ) {
            records.append($0)
        }
    }

    mutating func data(_ bytes: [UInt8], stream: UInt32, _ direction: Direction, at time: UInt64) {
        assembler.data(ByteBuffer(bytes: bytes), streamID: stream, direction: direction, at: time)
    }

    mutating func endStream(stream: UInt32, _ direction: Direction, at time: UInt64) {
        assembler.endStream(streamID: stream, direction: direction, at: time) { records.append($0) }
    }

    mutating func request(stream: UInt32, extra: [(String, String)] = [], at time: UInt64 = 10) throws {
        try headers(BlockEncoder.request(extra: extra), stream: stream, .clientToServer, at: time)
    }
}

@Suite("GRPCCallAssembler")
struct GRPCCallAssemblerTests {
    @Test("request headers fill path, authority, method and content type; pseudo-headers stay out of the metadata")
    func requestHeaders() throws {
        var h = Harness()
        try h.request(stream: 1, extra: [("x-custom", "v"), (":protocol", "odd")])
        h.assembler.finishAll(end: .connectionLost, at: 20) { h.records.append($0) }
        let r = try #require(h.records.first)
        #expect(r.path == "/gitaly.RepositoryService/RepositoryExists")
        #expect(r.service == "gitaly.RepositoryService")
        #expect(r.methodName == "RepositoryExists")
        #expect(r.authority == "gitaly.test")
        #expect(r.method == "POST")
        #expect(r.contentType == "application/grpc")
        #expect(
            r.requestMetadata.names == ["te", "x-gitlab-correlation-id", "x-custom"], "content-type has its own field")
        #expect(r.requestHeader("x-gitlab-correlation-id") == "01JCORRELATION")
        #expect(r.requestHeader("x-missing") == nil)
        #expect(r.startTime == 10)
        #expect(r.endTime == 20)
        #expect(r.end == .connectionLost)
    }

    @Test("authorization and proxy-authorization are noted but their values are never kept")
    func authorizationDropped() throws {
        var h = Harness()
        try h.headers(
            [(":path", "/a.B/C"), ("authorization", "Bearer s3cret"), ("proxy-authorization", "Basic c2VjcmV0")],
            stream: 1, .clientToServer, at: 1)
        h.assembler.finishAll(end: .connectionLost, at: 2) { h.records.append($0) }
        let r = try #require(h.records.first)
        #expect(r.hadAuthorization)
        #expect(r.requestMetadata.isEmpty)
        #expect(!"\(r.requestMetadata)".contains("s3cret"))
    }

    // Pins a decoder bug: the match on "authorization" is case-sensitive, so the value lands in requestMetadata.
    @Test("an upper-case Authorization name (malformed HTTP/2, but it still crosses the wire) never keeps its value")
    func upperCaseAuthorizationDropped() throws {
        var h = Harness()
        try h.headers(
            [(":path", "/a.B/C"), ("Authorization", "Bearer s3cret"), ("Proxy-Authorization", "Basic c2VjcmV0")],
            stream: 1, .clientToServer, at: 1)
        h.assembler.finishAll(end: .connectionLost, at: 2) { h.records.append($0) }
        let r = try #require(h.records.first)
        #expect(r.hadAuthorization)
        #expect(!r.requestMetadata.contains { $0.value.contains("s3cret") || $0.value.contains("c2VjcmV0") })
    }

    @Test("a request without authorization says so")
    func noAuthorization() throws {
        var h = Harness()
        try h.headers([(":path", "/a.B/C")], stream: 1, .clientToServer, at: 1)
        h.assembler.finishAll(end: .connectionLost, at: 2) { h.records.append($0) }
        #expect(h.records.first?.hadAuthorization == false)
    }

    @Test("grpc-timeout is parsed to nanoseconds and grpc-encoding noted; both stay in the metadata")
    func timeoutAndEncoding() throws {
        var h = Harness()
        try h.request(stream: 1, extra: [("grpc-timeout", "250m"), ("grpc-encoding", "gzip")])
        try h.request(stream: 3, extra: [("grpc-timeout", "bogus")])
        h.assembler.finishAll(end: .connectionLost, at: 2) { h.records.append($0) }
        #expect(h.records[0].timeoutNanos == 250_000_000)
        #expect(h.records[0].requestEncoding == "gzip")
        #expect(h.records[0].requestHeader("grpc-timeout") == "250m")
        #expect(h.records[0].requestHeader("grpc-encoding") == "gzip")
        #expect(h.records[1].timeoutNanos == nil)
        #expect(h.records[1].requestHeader("grpc-timeout") == "bogus")
    }

    @Test("a full call: headers, messages both ways, half-close, response headers, trailers")
    func fullCall() throws {
        var h = Harness()
        try h.request(stream: 1, at: 10)
        h.data(Frames.message([1, 2, 3]) + Frames.message([4]), stream: 1, .clientToServer, at: 11)
        h.endStream(stream: 1, .clientToServer, at: 12)
        try h.headers(
            [(":status", "200"), ("content-type", "application/grpc"), ("x-r", "1")], stream: 1, .serverToClient, at: 13
        )
        h.data(Frames.message(Array(repeating: 0, count: 10)), stream: 1, .serverToClient, at: 14)
        #expect(h.records.isEmpty)
        try h.headers(
            [("grpc-status", "3"), ("grpc-message", "bad%20input"), ("x-t", "2")], stream: 1, .serverToClient,
            endStream: true,
            at: 15)
        let r = try #require(h.records.first)
        #expect(h.assembler.openCalls == 0)
        #expect(r.requestMessages == 2)
        #expect(r.requestBytes == 4)
        #expect(r.requestWireBytes == 14)
        #expect(r.firstRequestMessage.map { Array($0.readableBytesView) } == [1, 2, 3])
        #expect(r.firstRequestMessageLength == 3)
        #expect(r.responseMessages == 1)
        #expect(r.responseBytes == 10)
        #expect(r.responseWireBytes == 15)
        #expect(r.httpStatus == 200)
        #expect(
            r.responseMetadata == [
                HeaderField(name: "content-type", value: "application/grpc"), HeaderField(name: "x-r", value: "1"),
            ])
        #expect(r.trailers.names == ["grpc-status", "grpc-message", "x-t"])
        #expect(r.trailers.value("grpc-message") == "bad%20input", "trailers keep the wire form")
        #expect(r.grpcStatus == 3)
        #expect(r.grpcMessage == "bad input")
        #expect(r.startTime == 10)
        #expect(r.requestEndTime == 12)
        #expect(r.firstResponseTime == 13)
        #expect(r.endTime == 15)
        #expect(r.end == .trailers)
    }

    @Test(
        "a single HEADERS with END_STREAM from the server is Trailers-Only: status in the trailers, no response metadata"
    )
    func trailersOnly() throws {
        var h = Harness()
        try h.request(stream: 1)
        try h.headers(
            [
                (":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "5"),
                ("grpc-message", "not found"),
            ],
            stream: 1, .serverToClient, endStream: true, at: 30)
        let r = try #require(h.records.first)
        #expect(r.end == .trailersOnly)
        #expect(r.httpStatus == 200)
        #expect(r.responseMetadata.isEmpty)
        #expect(r.trailers.names == ["content-type", "grpc-status", "grpc-message"])
        #expect(r.grpcStatus == 5)
        #expect(r.grpcMessage == "not found")
        #expect(r.firstResponseTime == 30)
    }

    @Test("a second server header block without END_STREAM still ends the call as trailers")
    func trailersWithoutEndStream() throws {
        var h = Harness()
        try h.request(stream: 1)
        try h.headers([(":status", "200")], stream: 1, .serverToClient, at: 20)
        try h.headers([("grpc-status", "0")], stream: 1, .serverToClient, at: 21)
        #expect(h.records.first?.end == .trailers)
        #expect(h.records.first?.grpcStatus == 0)
    }

    @Test("a server that ends with DATA END_STREAM and no trailers ends the call without a gRPC status")
    func endedByData() throws {
        var h = Harness()
        try h.request(stream: 1)
        try h.headers([(":status", "200")], stream: 1, .serverToClient, at: 20)
        h.endStream(stream: 1, .serverToClient, at: 21)
        let r = try #require(h.records.first)
        #expect(r.end == .trailers)
        #expect(r.grpcStatus == nil)
        #expect(r.endTime == 21)
    }

    @Test("a non-numeric grpc-status leaves the status unset")
    func nonNumericStatus() throws {
        var h = Harness()
        try h.request(stream: 1)
        try h.headers([(":status", "abc"), ("grpc-status", "OK")], stream: 1, .serverToClient, endStream: true, at: 20)
        #expect(h.records.first?.grpcStatus == nil)
        #expect(h.records.first?.httpStatus == nil)
    }

    @Test("response DATA before response headers sets the first response time")
    func dataBeforeHeaders() throws {
        var h = Harness()
        try h.request(stream: 1)
        h.data(Frames.message([1]), stream: 1, .serverToClient, at: 17)
        h.assembler.finishAll(end: .connectionLost, at: 18) { h.records.append($0) }
        #expect(h.records.first?.firstResponseTime == 17)
        #expect(h.records.first?.responseMessages == 1)
    }

    @Test("client trailers (HEADERS with END_STREAM on an open call) half-close the request and open no new call")
    func requestTrailers() throws {
        var h = Harness()
        try h.request(stream: 1, at: 1)
        try h.headers([("x-late", "1")], stream: 1, .clientToServer, at: 5)
        #expect(h.assembler.openCalls == 1)
        try h.headers([("x-late", "2")], stream: 1, .clientToServer, endStream: true, at: 6)
        h.assembler.finishAll(end: .connectionLost, at: 7) { h.records.append($0) }
        #expect(h.records.count == 1)
        #expect(h.records[0].requestEndTime == 6)
        #expect(h.records[0].requestHeader("x-late") == nil)
    }

    @Test("a request HEADERS with END_STREAM half-closes at once")
    func headersOnlyRequest() throws {
        var h = Harness()
        try h.headers([(":path", "/a.B/C")], stream: 1, .clientToServer, endStream: true, at: 3)
        h.assembler.finishAll(end: .connectionLost, at: 4) { h.records.append($0) }
        #expect(h.records.first?.requestEndTime == 3)
    }

    @Test("HEADERS on an even (server-initiated) stream open no call")
    func evenStreamIgnored() throws {
        var h = Harness()
        try h.request(stream: 2)
        #expect(h.assembler.openCalls == 0)
    }

    @Test("frames for streams without a call are ignored")
    func unknownStreams() throws {
        var h = Harness()
        try h.headers([(":status", "200")], stream: 9, .serverToClient, endStream: true, at: 1)
        h.data([0, 0, 0, 0, 1, 1], stream: 9, .clientToServer, at: 1)
        h.endStream(stream: 9, .serverToClient, at: 1)
        h.assembler.reset(streamID: 9, direction: .clientToServer, code: 8, at: 1) { h.records.append($0) }
        #expect(h.records.isEmpty)
        #expect(h.assembler.openCalls == 0)
    }

    @Test("more calls open at once than the limit allows is a decoding error")
    func maxOpenCalls() throws {
        var limits = GRPCCallAssembler.Limits()
        limits.maxOpenCalls = 2
        var h = Harness(limits: limits)
        try h.request(stream: 1)
        try h.request(stream: 3)
        let error = #expect(throws: WireDecodingError.self) { try h.request(stream: 5) }
        #expect(error?.reason == "more than 2 calls open at once")
    }

    @Test("RST_STREAM ends the call with the direction it travelled in and its code")
    func reset() throws {
        var h = Harness()
        try h.request(stream: 1)
        try h.request(stream: 3)
        h.assembler.reset(streamID: 1, direction: .clientToServer, code: 8, at: 40) { h.records.append($0) }
        h.assembler.reset(streamID: 3, direction: .serverToClient, code: 7, at: 41) { h.records.append($0) }
        #expect(h.records.map(\.end) == [.reset(by: .clientToServer, code: 8), .reset(by: .serverToClient, code: 7)])
        #expect(h.records.map(\.endTime) == [40, 41])
    }

    @Test("a server GOAWAY refuses the calls above its last stream id, in stream order, and keeps the others")
    func goAway() throws {
        var h = Harness()
        for stream: UInt32 in [1, 3, 5, 7] { try h.request(stream: stream) }
        h.assembler.goAway(lastStreamID: 3, direction: .serverToClient, code: 0, at: 50) { h.records.append($0) }
        #expect(h.records.map(\.streamID) == [5, 7])
        #expect(h.records.allSatisfy { $0.end == .refusedByGoAway(code: 0) })
        #expect(h.assembler.openCalls == 2)
    }

    @Test("a client GOAWAY refuses nothing")
    func clientGoAway() throws {
        var h = Harness()
        try h.request(stream: 1)
        h.assembler.goAway(lastStreamID: 0, direction: .clientToServer, code: 0, at: 50) { h.records.append($0) }
        #expect(h.records.isEmpty)
        #expect(h.assembler.openCalls == 1)
    }

    @Test("finishAll ends every open call in stream order")
    func finishAllOrder() throws {
        var h = Harness()
        for stream: UInt32 in [9, 1, 5, 3] { try h.request(stream: stream) }
        h.assembler.finishAll(end: .decodingStopped("why"), at: 60) { h.records.append($0) }
        #expect(h.records.map(\.streamID) == [1, 3, 5, 9])
        #expect(h.records.allSatisfy { $0.end == .decodingStopped("why") && $0.endTime == 60 })
        #expect(h.assembler.openCalls == 0)
    }

    @Test("the first request message is kept up to firstMessageCapture bytes, with its full length and flag")
    func firstMessageCapture() throws {
        var limits = GRPCCallAssembler.Limits()
        limits.firstMessageCapture = 4
        var h = Harness(limits: limits)
        try h.request(stream: 1)
        h.data(
            Frames.message(Array(1...10), compressed: true) + Frames.message([99]), stream: 1, .clientToServer, at: 1)
        h.assembler.finishAll(end: .connectionLost, at: 2) { h.records.append($0) }
        let r = try #require(h.records.first)
        #expect(r.firstRequestMessage.map { Array($0.readableBytesView) } == [1, 2, 3, 4])
        #expect(r.firstRequestMessageLength == 10)
        #expect(r.firstRequestMessageCompressed)
        #expect(h.assembler.takeEvents().isEmpty, "events are reported only when asked")
    }

    @Test("with recordEvents every message is reported as it completes, with up to messageCapture bytes")
    func recordEventsMessages() throws {
        var limits = GRPCCallAssembler.Limits()
        limits.recordEvents = true
        limits.messageCapture = 2
        limits.firstMessageCapture = 1
        var h = Harness(limits: limits)
        try h.request(stream: 1)
        h.data(Frames.message([1, 2, 3]) + Frames.message([4, 5, 6]), stream: 1, .clientToServer, at: 5)
        h.data(Frames.message([7]), stream: 1, .serverToClient, at: 6)
        let messages = h.assembler.takeEvents().compactMap { event -> (UInt64, WireMessage)? in
            if case .message(let m) = event.kind { return (event.time, m) }
            return nil
        }
        #expect(messages.map(\.1.direction) == [.clientToServer, .clientToServer, .serverToClient])
        #expect(messages.map(\.0) == [5, 5, 6])
        #expect(messages.map(\.1.length) == [3, 3, 1])
        #expect(messages.map { Array($0.1.payload.readableBytesView) } == [[1, 2], [4, 5], [7]])
        #expect(messages.map(\.1.truncated) == [true, true, false])
        h.assembler.finishAll(end: .connectionLost, at: 7) { h.records.append($0) }
        let r = try #require(h.records.first)
        #expect(
            r.firstRequestMessage.map { Array($0.readableBytesView) } == [1], "the first message keeps its own limit")
        #expect(h.assembler.takeEvents().map(\.time) == [7], "only the end is left")
    }

    @Test(
        "a recorded message keeps slices of large reads, but a small one sliced from a large read is copied out, so the reads it came in can be freed"
    )
    func recordedMessagesDoNotHoldLargeReads() throws {
        var limits = GRPCCallAssembler.Limits()
        limits.recordEvents = true
        var h = Harness(limits: limits)
        try h.request(stream: 1)
        // A 100-byte message at the start of a 256 KiB read, then a 200 KiB message filling the rest of that read
        // and going on into a second 256 KiB read.
        let small = Frames.message([UInt8](repeating: 1, count: 100))
        let large = Frames.message([UInt8](repeating: 2, count: 200 << 10))
        var first = ByteBufferAllocator().buffer(capacity: 256 << 10)
        first.writeBytes(small + large.prefix(100 << 10))
        var second = ByteBufferAllocator().buffer(capacity: 256 << 10)
        second.writeBytes(large.dropFirst(100 << 10))
        h.assembler.data(first, streamID: 1, direction: .clientToServer, at: 2)
        h.assembler.data(second, streamID: 1, direction: .clientToServer, at: 3)
        let messages = h.assembler.takeEvents().compactMap { event -> WireMessage? in
            if case .message(let m) = event.kind { return m }
            return nil
        }
        #expect(messages.map(\.pieces.count) == [100, 200 << 10])
        #expect(messages.first?.pieces.retainedBytes ?? 0 < 4096, "the small message was copied out of its read")
        #expect(messages.last?.pieces.pieces.count == 2, "the large message stays two slices, not copied")
        #expect(messages.last.map { Array($0.payload.readableBytesView) } == [UInt8](repeating: 2, count: 200 << 10))
    }

    @Test("a record's service and method need a path of exactly two parts")
    func pathParts() {
        #expect(GRPCCallRecord(streamID: 1, path: "/a.B/C", startTime: 0).methodName == "C")
        #expect(GRPCCallRecord(streamID: 1, path: "", startTime: 0).service == nil)
        #expect(GRPCCallRecord(streamID: 1, path: "/only", startTime: 0).methodName == nil)
        #expect(GRPCCallRecord(streamID: 1, path: "/a/b/c", startTime: 0).service == nil)
    }
}
