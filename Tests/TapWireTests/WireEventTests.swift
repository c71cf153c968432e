import NIOCore
import NIOHPACK
import TapWire
import Testing

/// Feeds chunks into a recording `ConnectionDecoder`, taking events after every chunk as the tap does.
private func recordConnection(
    _ chunks: [Chunk], limits: GRPCCallAssembler.Limits = .recording, close closeTime: UInt64? = nil
) -> (events: [WireEvent], records: [GRPCCallRecord]) {
    var decoder = ConnectionDecoder(limits: limits)
    var events: [WireEvent] = []
    var records: [GRPCCallRecord] = []
    for chunk in chunks {
        decoder.feed(ByteBuffer(bytes: chunk.bytes), direction: chunk.direction, at: chunk.time) { records.append($0) }
        events += decoder.takeEvents()
    }
    if let closeTime {
        decoder.close(at: closeTime) { records.append($0) }
        events += decoder.takeEvents()
    }
    return (events, records)
}

extension GRPCCallAssembler.Limits {
    static var recording: Self {
        var limits = Self()
        limits.recordEvents = true
        return limits
    }
}

/// One line per event, for comparing sequences.
private func describe(_ event: WireEvent) -> String {
    let prefix = "\(event.yamuxStreamID.map { "y\($0)/" } ?? "")s\(event.streamID)\(event.fromGitaly ? " gitaly" : "")"
    func fields(_ f: [RawHeaderField]) -> String {
        f.map { "\($0.name)=\($0.redacted ? "<redacted>" : $0.value.map { String($0, radix: 16) }.joined(separator: "."))" }
            .joined(separator: ",")
    }
    switch event.kind {
    case .callStarted(let path, let headers): return "\(prefix) start \(path) \(fields(headers))"
    case .responseHeaders(let headers): return "\(prefix) headers \(fields(headers))"
    case .message(let m):
        return "\(prefix) message \(m.direction) \(m.compressed) \(m.length) \(Array(m.payload.readableBytesView))"
    case .requestEnded: return "\(prefix) request-end"
    case .trailers(let headers, let only): return "\(prefix) trailers only=\(only) \(fields(headers))"
    case .callEnded(let end): return "\(prefix) end \(end)"
    case .sidechannelOpened(let id): return "\(prefix) sidechannel \(id)"
    case .sidechannelData(let d, let bytes): return "\(prefix) sidechannel-data \(d) \(bytes.readableBytes)"
    case .sidechannelEnded(let end): return "\(prefix) sidechannel-end \(end)"
    }
}

@Suite("WireEvent")
struct WireEventTests {
    @Test("a real grpcio unary call is reported start to end, with true-binary trailer bytes kept exactly")
    func realUnaryCall() throws {
        let fixture = try WireFixture.load("unary")
        let (events, records) = recordConnection(fixture.timeline, close: 9)
        #expect(records.count == 1)
        let lines = events.map(describe)
        #expect(lines.count == 7, "\(lines.joined(separator: "\n"))")
        guard case .callStarted(let path, let headers) = events.first?.kind else {
            Issue.record("first event is not the call start: \(lines)")
            return
        }
        #expect(path == "/taptest.Echo/Unary")
        let auth = try #require(headers.first { $0.name == "authorization" })
        #expect(auth.redacted && auth.value.isEmpty, "authorization never leaves the decoder")
        #expect(headers.contains { $0.name == ":path" && $0.value == Array("/taptest.Echo/Unary".utf8) })
        #expect(lines[1].contains("message clientToServer false 18"))
        #expect(lines[2].hasSuffix("request-end"))
        #expect(lines[3].contains("headers"))
        #expect(lines[4].contains("message serverToClient false 22"))
        guard case .trailers(let trailers, let only) = events[5].kind else {
            Issue.record("no trailers: \(lines)")
            return
        }
        #expect(!only)
        let bin = try #require(trailers.first { $0.name == "x-echo-trailer-bin" })
        // grpcio sends true binary between C-core peers: 0x00, then the raw bytes 00 01 fe ff 't' 'a' 'p'.
        #expect(bin.value == [0x00, 0x00, 0x01, 0xFE, 0xFF] + Array("tap".utf8))
        #expect(lines[6].contains("end trailers"))
        #expect(events.map(\.time) == [1, 1, 1, 2, 2, 2, 2])
    }

    @Test("events do not depend on how the bytes are split (every byte boundary of every fixture)")
    func everySplitGivesTheSameEvents() throws {
        for fixture in try WireFixture.all() {
            let reference = recordConnection(fixture.timeline, close: 9).events.map(describe)
            #expect(!reference.isEmpty, "\(fixture)")
            let total = fixture.totalBytes
            for cut in stride(from: 1, to: total, by: max(1, total / 300)) {
                let events = recordConnection(pieces(of: fixture.timeline, cutAt: [cut]), close: 9).events
                #expect(events.map(describe) == reference, "\(fixture) cut at \(cut)")
            }
        }
    }

    @Test("a message spread over many DATA pieces is assembled once; a message in one piece is not copied")
    func payloadAssembly() throws {
        var session = SyntheticSession()
        let big = (0..<70_000).map { UInt8(truncatingIfNeeded: $0) }
        session.request(stream: 1, messages: [big, [1, 2, 3]])
        let chunks = pieces(of: session.chunks, cutAt: Array(stride(from: 100, to: 80_000, by: 997)))
        let events = recordConnection(chunks).events
        let messages = events.compactMap { event -> WireMessage? in
            if case .message(let m) = event.kind { return m }
            return nil
        }
        #expect(messages.count == 2)
        #expect(Array(messages[0].payload.readableBytesView) == big)
        #expect(!messages[0].truncated)
        #expect(Array(messages[1].payload.readableBytesView) == [1, 2, 3])
    }

    @Test("messageCapture cuts payloads but keeps their length; the span path reports no events at all")
    func captureLimitAndOff() throws {
        var session = SyntheticSession()
        session.request(stream: 1, messages: [[UInt8](repeating: 7, count: 100)])
        session.response(stream: 1, messages: [[1]], status: 5, message: "nope")
        var limits = GRPCCallAssembler.Limits.recording
        limits.messageCapture = 10
        let events = recordConnection(session.chunks, limits: limits).events
        guard case .message(let m) = events[1].kind else {
            Issue.record("\(events.map(describe))")
            return
        }
        #expect(m.length == 100 && m.payload.readableBytes == 10 && m.truncated)
        let off = recordConnection(session.chunks, limits: .init())
        #expect(off.events.isEmpty)
        #expect(off.records.count == 1)
    }

    @Test("stopEvents ends reporting for the rest of the connection; records go on")
    func stopEvents() throws {
        var session = SyntheticSession()
        session.request(stream: 1, messages: [[1]])
        session.response(stream: 1, messages: [[2]])
        session.request(stream: 3, messages: [[3]])
        session.response(stream: 3, messages: [[4]])
        var decoder = ConnectionDecoder(limits: .recording)
        var records = 0
        var events: [WireEvent] = []
        for (i, chunk) in session.chunks.enumerated() {
            if i == 6 { decoder.stopEvents() }
            decoder.feed(ByteBuffer(bytes: chunk.bytes), direction: chunk.direction, at: chunk.time) { _ in records += 1 }
            events += decoder.takeEvents()
        }
        #expect(records == 2)
        #expect(!decoder.recordsEvents)
        #expect(events.allSatisfy { $0.streamID == 1 }, "\(events.map(describe))")
        #expect(!events.isEmpty)
    }

    @Test("a call still open when the connection closes ends with connectionLost")
    func closeEndsOpenCalls() throws {
        var session = SyntheticSession()
        session.request(stream: 1, messages: [[1]], endRequest: false)
        let events = recordConnection(session.chunks, close: 500).events.map(describe)
        #expect(events.last == "s1 end connectionLost", "\(events)")
    }

    @Test("a backchannel reports calls with their yamux stream and the sidechannel's bytes as they pass")
    func backchannelEvents() throws {
        let script = BackchannelScript.clone(packBytes: 3000)
        let events = recordConnection(script.chunks, close: 99_999).events
        let lines = events.map(describe)
        #expect(lines.first?.hasPrefix("y1/s1 start /gitaly.SmartHTTPService/PostUploadPackWithSidechannel") == true, "\(lines)")
        #expect(lines.contains("y4/s0 gitaly sidechannel 4242"))
        #expect(lines.contains("y4/s0 gitaly sidechannel-end closed"))
        var toServer = 0
        var toClient = 0
        for event in events {
            if case .sidechannelData(let direction, let bytes) = event.kind {
                if direction == .clientToServer { toServer += bytes.readableBytes } else { toClient += bytes.readableBytes }
            }
        }
        #expect(toServer == 4 + 46 + 4, "the client's `ok` is handshake, not data")
        #expect(toClient > 3000)
        #expect(lines.last == "y1/s1 end trailers")
    }
}
