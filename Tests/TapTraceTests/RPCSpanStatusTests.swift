import TapTrace
import TapWire
import Testing

/// How a call's end becomes the span status.
struct RPCSpanStatusTests {
    static func reset(after elapsedMs: UInt64, timeoutMs: Int64?) -> Span.Status {
        var record = GRPCCallRecord(streamID: 1, path: "/taptest.Echo/Unary", startTime: 1_000_000_000)
        record.timeoutNanos = timeoutMs.map { $0 * 1_000_000 }
        record.endTime = record.startTime + elapsedMs * 1_000_000
        record.end = .reset(by: .clientToServer, code: 8)
        return RPCSpanBuilder.status(record)
    }

    @Test(
        "a client reset at its deadline is DEADLINE_EXCEEDED, allowing for grpc-timeout rounded up",
        arguments: [
            (UInt64(300), Int64?(300), true), (299, 300, true), (286, 300, true), (250, 300, false), (100, 300, false),
            (5_000, nil, false),
        ])
    func deadlineFromTiming(elapsedMs: UInt64, timeoutMs: Int64?, deadline: Bool) {
        let status = Self.reset(after: elapsedMs, timeoutMs: timeoutMs)
        #expect(status.code == .error)
        #expect(status.message?.hasPrefix("DEADLINE_EXCEEDED") == deadline, "\(status)")
        #expect(status.message?.contains("stream reset by client (CANCEL)") == true)
    }
}
