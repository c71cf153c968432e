import Testing

@testable import TapTrace

@Suite("JaegerParser")
struct JaegerParserTests {
    @Test("a full-width header parses; the header's span id becomes the parent, its parent is dropped")
    func fullWidth() throws {
        let context = try #require(
            JaegerParser.parse("4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7:53995c3f42cd8ad8:1"))
        #expect(context.traceID.description == "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(context.parentSpanID == SpanID(0x00f0_67aa_0ba9_02b7))
        #expect(context.sampled)
        #expect(context.format == .jaeger)
    }

    @Test("short ids are left-padded with zeros")
    func shortIDsArePadded() throws {
        let context = try #require(JaegerParser.parse("abc:1f:0:1"))
        #expect(context.traceID == TraceID(high: 0, low: 0xabc))
        #expect(context.traceID.description == "00000000000000000000000000000abc")
        #expect(context.parentSpanID == SpanID(0x1f))
        let wide = try #require(JaegerParser.parse("1234567890abcdef1:2:0:0"))
        #expect(wide.traceID == TraceID(high: 0x1, low: 0x2345_6789_0abc_def1))
    }

    @Test("upper-case hex is accepted, as Jaeger clients do")
    func upperCaseHex() throws {
        let context = try #require(JaegerParser.parse("ABC:DEF:0:1"))
        #expect(context.traceID.low == 0xabc)
        #expect(context.parentSpanID == SpanID(0xdef))
    }

    @Test("flags: 0 not sampled, 1 sampled, 2 debug counts as sampled, 3 both")
    func flags() throws {
        #expect(try #require(JaegerParser.parse("a:b:0:0")).sampled == false)
        #expect(try #require(JaegerParser.parse("a:b:0:1")).sampled == true)
        #expect(try #require(JaegerParser.parse("a:b:0:2")).sampled == true)
        #expect(try #require(JaegerParser.parse("a:b:0:3")).sampled == true)
        #expect(try #require(JaegerParser.parse("a:b:0:04")).sampled == false)
    }

    @Test("a percent-encoded value decodes before parsing, either escape case")
    func percentEncoded() throws {
        let context = try #require(JaegerParser.parse("4bf92f3577b34da6%3A00f067aa0ba902b7%3a0%3A1"))
        #expect(context.traceID == TraceID(high: 0, low: 0x4bf9_2f35_77b3_4da6))
        #expect(context.parentSpanID == SpanID(0x00f0_67aa_0ba9_02b7))
        #expect(context.sampled)
    }

    @Test("baggage passed in is attached")
    func baggageAttached() throws {
        let context = try #require(JaegerParser.parse("a:b:0:1", baggage: ["tenant": "acme"]))
        #expect(context.baggage == ["tenant": "acme"])
    }

    @Test("uberctx- headers become baggage keyed without the prefix, decoded, first wins")
    func baggageFromMetadata() {
        let baggage = JaegerParser.baggage(from: [
            (name: "uberctx-tenant", value: "acme"),
            (name: "uberctx-path", value: "a%2Fb%20c"),
            (name: "uberctx-broken", value: "100%"),
            (name: "uberctx-tenant", value: "other"),
            (name: "uberctx-", value: "no key"),
            (name: "uber-trace-id", value: "a:b:0:1"),
            (name: "x-uberctx-nope", value: "no"),
        ])
        #expect(baggage == ["tenant": "acme", "path": "a/b c", "broken": "100%"])
    }

    @Test(
        "invalid uber-trace-id values are rejected",
        arguments: [
            ("empty", ""),
            ("zero trace id", "0:00f067aa0ba902b7:0:1"),
            ("long zero trace id", "00000000000000000000000000000000:1:0:1"),
            ("zero span id", "4bf92f3577b34da6:0:0:1"),
            ("trace id longer than 32 digits", "14bf92f3577b34da6a3ce929d0e0e4736:1:0:1"),
            ("span id longer than 16 digits", "1:100f067aa0ba902b7:0:1"),
            ("parent id longer than 16 digits", "1:1:100f067aa0ba902b7:1"),
            ("three fields", "1:1:1"),
            ("five fields", "1:1:0:1:1"),
            ("empty trace id", ":1:0:1"),
            ("empty span id", "1::0:1"),
            ("empty parent id", "1:1::1"),
            ("empty flags", "1:1:0:"),
            ("non-hex trace id", "xyz:1:0:1"),
            ("non-hex flags", "1:1:0:z"),
            ("three-digit flags", "1:1:0:001"),
            ("broken escape", "1%3:1:0:1"),
            ("escape at end", "1:1:0:1%"),
            ("non-hex escape", "1%zz1:0:1"),
        ])
    func rejectsInvalid(_ testCase: (String, String)) {
        #expect(JaegerParser.parse(testCase.1) == nil, "\(testCase.0)")
    }
}
