import NIOCore
import TapRecord
import TapWire
import Testing

private func call(responses: [[UInt8]], lengths: [Int]? = nil, status: String = "0", message: String = "")
    -> RecordedCall
{
    var c = RecordedCall(id: 1, connection: 1, path: "/a.B/C", startTime: 0, fromGitaly: false, requestHeaders: [])
    c.responses = responses.enumerated().map { i, bytes in
        RecordedMessage(
            time: 0, compressed: false, length: lengths?[i] ?? bytes.count, payload: ByteBuffer(bytes: bytes))
    }
    c.trailers = [RecordedHeader(name: "grpc-status", value: Array(status.utf8))]
    if !message.isEmpty { c.trailers!.append(RecordedHeader(name: "grpc-message", value: Array(message.utf8))) }
    c.endTime = 10
    return c
}

private func answer(_ messages: [[UInt8]], status: Int? = 0, message: String = "") -> ReplayAnswer {
    ReplayAnswer(status: status, statusMessage: message, messages: messages, duration: 1)
}

@Suite struct CallComparisonTests {
    @Test("identical answers have no differences")
    func same() {
        #expect(CallComparison.differences(recorded: call(responses: [[8, 6]]), replayed: answer([[8, 6]])).isEmpty)
    }

    @Test("a different status is named with both names and the new message")
    func status() {
        let d = CallComparison.differences(
            recorded: call(responses: []), replayed: answer([], status: 5, message: "gone"))
        #expect(d == ["status: recorded OK, replayed NOT_FOUND (gone)"])
    }

    @Test("a different message count and a changed protobuf field are named precisely")
    func countAndField() {
        // field 1 (varint) = 6 vs 7; field 2 (string) "ab" vs "ac".
        let recorded = call(responses: [[0x08, 6, 0x12, 2, 0x61, 0x62], [1]])
        let d = CallComparison.differences(recorded: recorded, replayed: answer([[0x08, 6, 0x12, 2, 0x61, 0x63]]))
        #expect(d.count == 2)
        #expect(d[0] == "response messages: recorded 2, replayed 1")
        #expect(
            d[1]
                == "response message 0: same length (6 bytes), content differs; first difference at byte 5 (field 2[0]: \"ab\" vs \"ac\")"
        )
        let nested = CallComparison.differences(
            recorded: call(responses: [[0x0A, 2, 0x08, 6]]), replayed: answer([[0x0A, 2, 0x08, 7]]))
        #expect(
            nested == [
                "response message 0: same length (4 bytes), content differs; first difference at byte 3 (field 1[0] > field 1[0]: 6 vs 7)"
            ])
    }

    @Test("a recorded message cut at the cap matches on its stored bytes and its length")
    func truncated() {
        let recorded = call(responses: [[1, 2, 3]], lengths: [5])
        #expect(CallComparison.differences(recorded: recorded, replayed: answer([[1, 2, 3, 4, 5]])).isEmpty)
        #expect(!CallComparison.differences(recorded: recorded, replayed: answer([[1, 2, 9, 4, 5]])).isEmpty)
        #expect(!CallComparison.differences(recorded: recorded, replayed: answer([[1, 2, 3, 4]])).isEmpty)
    }

    @Test("an answer without a status is reported with how it ended")
    func failure() {
        let a = ReplayAnswer(
            status: nil, statusMessage: "", messages: [], failure: "the target reset the stream", duration: 1)
        #expect(
            CallComparison.differences(recorded: call(responses: []), replayed: a) == [
                "no status: the target reset the stream (recorded OK)"
            ])
    }

    @Test("a call the recorded client reset matches a replay that reset it at the same point, or a deadline status")
    func clientReset() {
        var recorded = call(responses: [[1]])
        recorded.trailers = nil
        recorded.end = .reset(by: .clientToServer, code: 8)
        let reset = ReplayAnswer(status: nil, statusMessage: "", messages: [[1]], resetByReplay: true, duration: 1)
        #expect(CallComparison.differences(recorded: recorded, replayed: reset).isEmpty)
        let finished = CallComparison.differences(recorded: recorded, replayed: answer([[1], [2]]))
        #expect(
            finished.first
                == "end: the recorded client reset the call (code 8) after 1 message(s); replayed, it ended first: OK")
        recorded.requestHeaders = [RecordedHeader(name: "grpc-timeout", value: Array("300m".utf8))]
        recorded.responses = []
        #expect(CallComparison.differences(recorded: recorded, replayed: answer([], status: 4)).isEmpty)
    }
}

@Suite struct EventEncoderTests {
    @Test("calls on different connections, yamux streams and directions of the backchannel get their own ids")
    func callIdentity() {
        var encoder = EventEncoder(limits: RecordingLimits())
        let start = { (stream: UInt32, yamux: UInt32?, fromGitaly: Bool) in
            WireEvent(
                .callStarted(path: "/a.B/C", headers: []), time: 1, streamID: stream, yamuxStreamID: yamux,
                fromGitaly: fromGitaly)
        }
        var ids: [UInt64] = []
        for (conn, event) in [
            (1, start(1, nil, false)), (2, start(1, nil, false)), (3, start(1, 1, false)), (3, start(1, 2, true)),
        ] {
            for case .callStarted(let id, _, _, _, _, _, _, _) in encoder.records(for: event, connection: UInt64(conn))
            { ids.append(id) }
        }
        #expect(ids == [1, 2, 3, 4])
        let end = WireEvent(.callEnded(.trailers), time: 2, streamID: 1, yamuxStreamID: 2, fromGitaly: true)
        let records = encoder.records(for: end, connection: 3)
        guard case .callEnded(let id, _, _)? = records.first else {
            Issue.record("no callEnded record: \(records)")
            return
        }
        #expect(id == 4)
        #expect(encoder.openCalls == 3)
        #expect(encoder.records(for: end, connection: 3).isEmpty, "a call ends once")
    }
}
