import Testing

@testable import TapTrace

@Suite("B3Parser")
struct B3ParserTests {
    static let traceID128 = "80f198ee56343ba864fe8b2a57d3eff7"
    static let traceID64 = "a3ce929d0e0e4736"
    static let spanID = "e457b5a2e4d86bd1"
    static let parentID = "05e3ac9a4f6e3b90"

    // MARK: single header

    @Test("single header with all four fields: span id is the caller's span")
    func singleFull() {
        let result = B3Parser.parse(single: "\(Self.traceID128)-\(Self.spanID)-1-\(Self.parentID)")
        let expected = TraceContext(
            traceID: TraceID(high: 0x80f1_98ee_5634_3ba8, low: 0x64fe_8b2a_57d3_eff7),
            parentSpanID: SpanID(0xe457_b5a2_e4d8_6bd1),
            sampled: true,
            format: .b3
        )
        #expect(result == .context(expected))
    }

    @Test("single header with a 64-bit trace id is left-padded to 128 bits")
    func singleShortTraceID() throws {
        guard case .context(let context) = B3Parser.parse(single: "\(Self.traceID64)-\(Self.spanID)") else {
            Issue.record("expected a context")
            return
        }
        #expect(context.traceID.description == "0000000000000000a3ce929d0e0e4736")
        #expect(context.sampled == false, "a deferred decision reads as not sampled")
    }

    @Test("single header sampling states: 1 and d sample, 0 denies")
    func singleSamplingStates() {
        for (state, sampled) in [("1", true), ("d", true), ("0", false)] {
            guard case .context(let context) = B3Parser.parse(single: "\(Self.traceID64)-\(Self.spanID)-\(state)")
            else {
                Issue.record("expected a context for \(state)")
                continue
            }
            #expect(context.sampled == sampled, "state \(state)")
        }
    }

    @Test("a lone 0 is deny with no context; a lone 1 or d is a sampling-only decision")
    func singleSamplingOnly() {
        #expect(B3Parser.parse(single: "0") == .samplingOnly(sampled: false))
        #expect(B3Parser.parse(single: "1") == .samplingOnly(sampled: true))
        #expect(B3Parser.parse(single: "d") == .samplingOnly(sampled: true))
    }

    @Test(
        "invalid single b3 values are rejected",
        arguments: [
            ("empty", ""),
            ("lone true", "true"),
            ("lone 2", "2"),
            ("trace id only with dash", "a3ce929d0e0e4736-"),
            ("trace id 20 digits", "a3ce929d0e0e4736abcd-e457b5a2e4d86bd1"),
            ("trace id 8 digits", "a3ce929d-e457b5a2e4d86bd1"),
            ("zero trace id", "0000000000000000-e457b5a2e4d86bd1"),
            ("zero span id", "a3ce929d0e0e4736-0000000000000000"),
            ("short span id", "a3ce929d0e0e4736-e457b5a2e4d86bd"),
            ("upper-case trace id", "A3CE929D0E0E4736-e457b5a2e4d86bd1"),
            ("bad sampling state", "a3ce929d0e0e4736-e457b5a2e4d86bd1-true"),
            ("empty sampling state", "a3ce929d0e0e4736-e457b5a2e4d86bd1-"),
            ("bad parent", "a3ce929d0e0e4736-e457b5a2e4d86bd1-1-05e3ac9a"),
            ("zero parent", "a3ce929d0e0e4736-e457b5a2e4d86bd1-1-0000000000000000"),
            ("five fields", "a3ce929d0e0e4736-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90-1"),
        ])
    func singleRejectsInvalid(_ testCase: (String, String)) {
        #expect(B3Parser.parse(single: testCase.1) == .invalid(header: "b3"), "\(testCase.0)")
    }

    // MARK: multi headers

    @Test("multi headers with sampled 1 give the context; parent id is validated and dropped")
    func multiFull() {
        let headers = B3Parser.MultiHeaders(
            traceID: Self.traceID128, spanID: Self.spanID, parentSpanID: Self.parentID, sampled: "1")
        guard case .context(let context) = B3Parser.parse(headers) else {
            Issue.record("expected a context")
            return
        }
        #expect(context.traceID.description == Self.traceID128)
        #expect(context.parentSpanID?.description == Self.spanID)
        #expect(context.sampled)
        #expect(context.format == .b3)
    }

    @Test("multi headers: 64-bit trace id is left-padded")
    func multiShortTraceID() {
        guard case .context(let context) = B3Parser.parse(.init(traceID: Self.traceID64, spanID: Self.spanID))
        else {
            Issue.record("expected a context")
            return
        }
        #expect(context.traceID == TraceID(high: 0, low: 0xa3ce_929d_0e0e_4736))
    }

    @Test("x-b3-sampled accepts 1/0/true/false; x-b3-flags 1 means debug, which samples")
    func multiSampling() {
        func sampled(_ sampled: String?, flags: String? = nil) -> Bool? {
            guard
                case .context(let context) = B3Parser.parse(
                    .init(traceID: Self.traceID64, spanID: Self.spanID, sampled: sampled, flags: flags))
            else { return nil }
            return context.sampled
        }
        #expect(sampled("1") == true)
        #expect(sampled("true") == true)
        #expect(sampled("0") == false)
        #expect(sampled("false") == false)
        #expect(sampled(nil) == false)
        #expect(sampled(nil, flags: "1") == true)
        #expect(sampled("0", flags: "1") == true, "debug wins, as in Zipkin's Brave")
        #expect(sampled(nil, flags: "0") == false)
    }

    @Test("multi headers picked out of metadata, first value wins")
    func multiFromMetadata() {
        let headers = B3Parser.MultiHeaders(metadata: [
            (name: "x-b3-traceid", value: Self.traceID64),
            (name: "x-b3-spanid", value: Self.spanID),
            (name: "x-b3-spanid", value: "ffffffffffffffff"),
            (name: "x-b3-sampled", value: "1"),
            (name: "x-b3-flags", value: "1"),
            (name: "x-b3-parentspanid", value: Self.parentID),
            (name: "b3", value: "0"),
        ])
        #expect(
            headers
                == B3Parser.MultiHeaders(
                    traceID: Self.traceID64, spanID: Self.spanID, parentSpanID: Self.parentID, sampled: "1",
                    flags: "1"))
    }

    @Test("no multi header present gives nil; only a sampling header gives sampling-only")
    func multiAbsentOrSamplingOnly() {
        #expect(B3Parser.parse(B3Parser.MultiHeaders()) == nil)
        #expect(B3Parser.parse(.init(sampled: "0")) == .samplingOnly(sampled: false))
        #expect(B3Parser.parse(.init(flags: "1")) == .samplingOnly(sampled: true))
    }

    @Test(
        "invalid multi headers name the header at fault",
        arguments: [
            ("span id missing", B3Parser.MultiHeaders(traceID: B3ParserTests.traceID64), "x-b3-spanid"),
            ("trace id missing", B3Parser.MultiHeaders(spanID: B3ParserTests.spanID), "x-b3-spanid"),
            ("only parent", B3Parser.MultiHeaders(parentSpanID: B3ParserTests.parentID), "x-b3-parentspanid"),
            (
                "zero trace id", B3Parser.MultiHeaders(traceID: "0000000000000000", spanID: B3ParserTests.spanID),
                "x-b3-traceid"
            ),
            (
                "upper-case trace id", B3Parser.MultiHeaders(traceID: "A3CE929D0E0E4736", spanID: B3ParserTests.spanID),
                "x-b3-traceid"
            ),
            (
                "12-digit trace id", B3Parser.MultiHeaders(traceID: "a3ce929d0e0e", spanID: B3ParserTests.spanID),
                "x-b3-traceid"
            ),
            (
                "zero span id", B3Parser.MultiHeaders(traceID: B3ParserTests.traceID64, spanID: "0000000000000000"),
                "x-b3-spanid"
            ),
            ("short span id", B3Parser.MultiHeaders(traceID: B3ParserTests.traceID64, spanID: "e457"), "x-b3-spanid"),
            (
                "bad parent",
                B3Parser.MultiHeaders(
                    traceID: B3ParserTests.traceID64, spanID: B3ParserTests.spanID, parentSpanID: "x"),
                "x-b3-parentspanid"
            ),
            (
                "sampled d",
                B3Parser.MultiHeaders(traceID: B3ParserTests.traceID64, spanID: B3ParserTests.spanID, sampled: "d"),
                "x-b3-sampled"
            ),
            ("sampled yes", B3Parser.MultiHeaders(sampled: "yes"), "x-b3-sampled"),
        ])
    func multiRejectsInvalid(_ testCase: (String, B3Parser.MultiHeaders, String)) {
        #expect(B3Parser.parse(testCase.1) == .invalid(header: testCase.2), "\(testCase.0)")
    }
}
