import Testing

@testable import TapTrace

@Suite("TraceContextExtractor")
struct TraceContextExtractorTests {
    static let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    static let uberTraceID = "1111111111111111:2222222222222222:0:1"
    static let b3 = "3333333333333333-4444444444444444-1"

    @Test("no trace headers: no context, nothing malformed")
    func empty() {
        let result = TraceContextExtractor.extract(from: [(name: "content-type", value: "application/grpc")])
        #expect(result == TraceContextExtraction(context: nil, malformed: []))
    }

    @Test("traceparent wins over uber-trace-id and b3")
    func traceparentFirst() throws {
        let result = TraceContextExtractor.extract(from: [
            (name: "b3", value: Self.b3),
            (name: "uber-trace-id", value: Self.uberTraceID),
            (name: "traceparent", value: Self.traceparent),
        ])
        let context = try #require(result.context)
        #expect(context.format == .w3c)
        #expect(context.traceID.description == "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(result.malformed.isEmpty)
    }

    @Test("uber-trace-id wins over b3, and carries the uberctx baggage")
    func jaegerSecond() throws {
        let result = TraceContextExtractor.extract(from: [
            (name: "b3", value: Self.b3),
            (name: "uberctx-tenant", value: "acme"),
            (name: "uber-trace-id", value: Self.uberTraceID),
        ])
        let context = try #require(result.context)
        #expect(context.format == .jaeger)
        #expect(context.parentSpanID == SpanID(0x2222_2222_2222_2222))
        #expect(context.baggage == ["tenant": "acme"])
    }

    @Test("baggage is not attached to a context from another format")
    func baggageOnlyForJaeger() throws {
        let result = TraceContextExtractor.extract(from: [
            (name: "uberctx-tenant", value: "acme"),
            (name: "traceparent", value: Self.traceparent),
        ])
        #expect(try #require(result.context).baggage.isEmpty)
    }

    @Test("a malformed traceparent falls through to uber-trace-id and is reported")
    func malformedTraceparentFallsThrough() throws {
        let result = TraceContextExtractor.extract(from: [
            (name: "traceparent", value: "00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            (name: "uber-trace-id", value: Self.uberTraceID),
        ])
        #expect(try #require(result.context).format == .jaeger)
        #expect(result.malformed == ["traceparent"])
    }

    @Test("malformed traceparent and uber-trace-id fall through to b3, both reported in precedence order")
    func fallsThroughToB3() throws {
        let result = TraceContextExtractor.extract(from: [
            (name: "b3", value: Self.b3),
            (name: "uber-trace-id", value: "0:1:0:1"),
            (name: "traceparent", value: "garbage"),
        ])
        let context = try #require(result.context)
        #expect(context.format == .b3)
        #expect(context.parentSpanID == SpanID(0x4444_4444_4444_4444))
        #expect(result.malformed == ["traceparent", "uber-trace-id"])
    }

    @Test("a malformed b3 falls through to the x-b3 headers")
    func b3SingleFallsThroughToMulti() throws {
        let result = TraceContextExtractor.extract(from: [
            (name: "b3", value: "nonsense-value"),
            (name: "x-b3-traceid", value: "5555555555555555"),
            (name: "x-b3-spanid", value: "6666666666666666"),
            (name: "x-b3-sampled", value: "1"),
        ])
        let context = try #require(result.context)
        #expect(context.parentSpanID == SpanID(0x6666_6666_6666_6666))
        #expect(result.malformed == ["b3"])
    }

    @Test("a malformed lower-precedence header is reported even when a higher one wins")
    func lowerMalformedStillReported() throws {
        let result = TraceContextExtractor.extract(from: [
            (name: "traceparent", value: Self.traceparent),
            (name: "uber-trace-id", value: "not:a:trace"),
            (name: "x-b3-traceid", value: "5555555555555555"),
        ])
        #expect(try #require(result.context).format == .w3c)
        #expect(result.malformed == ["uber-trace-id", "x-b3-spanid"])
    }

    @Test("b3: 0 (deny) is valid, yields no context and is not malformed")
    func b3DenyIsNotMalformed() {
        let result = TraceContextExtractor.extract(from: [(name: "b3", value: "0")])
        #expect(result == TraceContextExtraction(context: nil, malformed: []))
    }

    @Test("two traceparent headers are malformed (W3C); repeated tracestate headers are joined")
    func repeatedW3CHeaders() throws {
        let twice = TraceContextExtractor.extract(from: [
            (name: "traceparent", value: Self.traceparent),
            (name: "traceparent", value: Self.traceparent),
        ])
        #expect(twice == TraceContextExtraction(context: nil, malformed: ["traceparent"]))

        let joined = TraceContextExtractor.extract(from: [
            (name: "tracestate", value: "a=1"),
            (name: "traceparent", value: Self.traceparent),
            (name: "tracestate", value: "b=2"),
        ])
        #expect(try #require(joined.context).traceState == "a=1,b=2")
    }

    @Test("every format malformed: no context, every header named once")
    func allMalformed() {
        let result = TraceContextExtractor.extract(from: [
            (name: "traceparent", value: ""),
            (name: "uber-trace-id", value: ""),
            (name: "b3", value: ""),
            (name: "x-b3-sampled", value: "maybe"),
        ])
        #expect(result.context == nil)
        #expect(result.malformed == ["traceparent", "uber-trace-id", "b3", "x-b3-sampled"])
    }
}
