import Testing

@testable import TapTrace

@Suite("TraceparentParser")
struct TraceparentParserTests {
    static let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    @Test("the W3C spec example parses into trace id, caller span and sampled flag")
    func specExample() throws {
        let context = try #require(TraceparentParser.parse(Self.valid))
        #expect(context.traceID == TraceID(high: 0x4bf9_2f35_77b3_4da6, low: 0xa3ce_929d_0e0e_4736))
        #expect(context.parentSpanID == SpanID(0x00f0_67aa_0ba9_02b7))
        #expect(context.sampled)
        #expect(context.format == .w3c)
        #expect(context.traceState == nil)
        #expect(context.baggage.isEmpty)
    }

    @Test("flags 00 means not sampled; only bit 0 decides")
    func sampledFlagIsBitZero() throws {
        #expect(try #require(TraceparentParser.parse(String(Self.valid.dropLast(2)) + "00")).sampled == false)
        #expect(try #require(TraceparentParser.parse(String(Self.valid.dropLast(2)) + "02")).sampled == false)
        #expect(try #require(TraceparentParser.parse(String(Self.valid.dropLast(2)) + "03")).sampled == true)
    }

    @Test("tracestate is kept verbatim, an empty one is dropped")
    func tracestateVerbatim() throws {
        let state = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
        #expect(try #require(TraceparentParser.parse(Self.valid, tracestate: state)).traceState == state)
        #expect(try #require(TraceparentParser.parse(Self.valid, tracestate: "")).traceState == nil)
    }

    @Test("surrounding spaces and tabs are ignored")
    func optionalWhitespace() {
        #expect(TraceparentParser.parse(" \t" + Self.valid + " ") != nil)
    }

    @Test("a future version may append fields after a dash")
    func futureVersionWithSuffix() throws {
        let context = try #require(TraceparentParser.parse("cc" + Self.valid.dropFirst(2) + "-what-the-future-holds"))
        #expect(context.traceID.description == "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(TraceparentParser.parse("01" + Self.valid.dropFirst(2)) != nil)
    }

    @Test(
        "invalid traceparent values are rejected",
        arguments: [
            ("empty", ""),
            ("version ff", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("all-zero trace id", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            ("all-zero span id", "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
            ("upper-case trace id", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            ("upper-case span id", "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01"),
            ("upper-case version", "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("upper-case flags", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A"),
            ("version 00 with suffix", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"),
            ("version 00 one char too long", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011"),
            ("future version suffix without dash", "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x"),
            ("short trace id", "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01"),
            ("long span id", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b77-01"),
            ("non-hex trace id", "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01"),
            ("non-hex flags", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x"),
            ("non-hex version", "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("underscore separators", "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01"),
            ("one-digit flags", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"),
            ("too short", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"),
            ("inner whitespace", "00-4bf92f3577b34da6a3ce929d0e0e4736 -0f067aa0ba902b7-01"),
        ])
    func rejectsInvalid(_ testCase: (String, String)) {
        #expect(TraceparentParser.parse(testCase.1) == nil, "\(testCase.0)")
    }
}
