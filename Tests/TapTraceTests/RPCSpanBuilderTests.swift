import Testing

@testable import TapTrace
@testable import TapWire

@Suite("RPCSpanBuilder trace context")
struct RPCSpanBuilderTests {
    static let connection = ConnectionInfo(
        id: 7, transport: "unix", peer: "", listenAddress: "unix:/tap.sock", upstreamAddress: "unix:/gitaly.sock",
        startTimeUnixNano: 1)

    static func record(_ metadata: [(String, String)]) -> GRPCCallRecord {
        var record = GRPCCallRecord(streamID: 1, path: "/gitaly.RefService/FindDefaultBranchName", startTime: 10)
        record.endTime = 20
        record.grpcStatus = 0
        record.requestMetadata = metadata.map { HeaderField(name: $0.0, value: $0.1) }
        return record
    }

    @Test("a traceparent continues the caller's trace, and its tracestate travels with the span verbatim")
    func traceparentAndTracestate() {
        let span = RPCSpanBuilder().span(
            for: Self.record([
                ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
                ("tracestate", "congo=t61rcWkgMzE"),
            ]), connection: Self.connection)
        #expect(span.traceID == TraceID(high: 0x4bf9_2f35_77b3_4da6, low: 0xa3ce_929d_0e0e_4736))
        #expect(span.parentSpanID == SpanID(0x00f0_67aa_0ba9_02b7))
        #expect(span.sampled)
        #expect(span.traceState == "congo=t61rcWkgMzE")
        #expect(span.attributes["tap.trace.propagation"] == .string("traceparent"))
    }

    @Test("without a caller context the span starts a trace of its own and has no tracestate")
    func newTrace() {
        let span = RPCSpanBuilder().span(for: Self.record([("tracestate", "orphan=1")]), connection: Self.connection)
        #expect(span.parentSpanID == nil)
        #expect(span.traceID.isValid)
        #expect(span.traceState == nil)
    }
}
