import Foundation
import Testing

@testable import TapTrace

@Suite("SpanJSONEncoder")
struct SpanJSONEncoderTests {
    static let span = Span(
        traceID: TraceID(high: 0x4bf9_2f35_77b3_4da6, low: 0xa3ce_929d_0e0e_4736),
        spanID: SpanID(0x00f0_67aa_0ba9_02b7),
        parentSpanID: SpanID(0x53),
        name: "gitaly.CommitService/FindCommit",
        kind: .server,
        startTimeUnixNano: 1_700_000_000_123_456_789,
        endTimeUnixNano: 1_700_000_000_223_456_789,
        status: Span.Status(code: .error, message: "not found"),
        attributes: [
            "rpc.system": .string("grpc"),
            "rpc.grpc.status_code": .int(5),
            "gitaly.ratio": .double(0.25),
            "gitaly.cached": .bool(true),
            "gitaly.feature_flags.enabled": .stringArray(["a", "b"]),
            "delta": .int(-12),
        ],
        events: [
            Span.Event(name: "first_message", timeUnixNano: 1_700_000_000_200_000_000, attributes: ["bytes": .int(42)])
        ]
    )

    func object(_ span: Span) throws -> [String: Any] {
        let line = SpanJSONEncoder.encode(span)
        let parsed = try JSONSerialization.jsonObject(with: Data(line.utf8))
        return try #require(parsed as? [String: Any])
    }

    @Test("a writer's key-order cache gives the same lines as sorting every span, whatever the key sets and orders")
    func keyOrderCache() {
        var cache = SpanJSONEncoder.KeyOrderCache()
        // Key sets of equal size that differ, sets that come back after others (in round 1, the same keys set in the
        // reverse order), more sets than the cache holds.
        let keySets: [[String]] = (0..<12).map { n in (0..<(n % 3 + 2)).map { "k\((n + $0 * 7) % 11).x" } }
        for round in 0..<3 {
            for (index, keys) in keySets.enumerated() {
                var span = Self.span
                let ordered = round == 1 ? keys.reversed() : keys
                span.attributes = SpanAttributes(ordered.map { (key: $0, value: AttributeValue.int(Int64(round))) })
                if index % 4 == 0 { span.attributes = [:] }
                var cached: [UInt8] = []
                SpanJSONEncoder.encode(span, into: &cached, cache: &cache)
                #expect(String(decoding: cached, as: UTF8.self) == SpanJSONEncoder.encode(span), "set \(index)")
            }
        }
    }

    @Test("a full span round-trips through JSONSerialization with every field in place")
    func roundTrip() throws {
        let json = try object(Self.span)
        #expect(json["traceId"] as? String == "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(json["spanId"] as? String == "00f067aa0ba902b7")
        #expect(json["parentSpanId"] as? String == "0000000000000053")
        #expect(json["name"] as? String == "gitaly.CommitService/FindCommit")
        #expect(json["kind"] as? String == "server")
        #expect((json["startTimeUnixNano"] as? NSNumber)?.uint64Value == 1_700_000_000_123_456_789)
        #expect((json["endTimeUnixNano"] as? NSNumber)?.uint64Value == 1_700_000_000_223_456_789)
        let status = try #require(json["status"] as? [String: Any])
        #expect(status["code"] as? String == "error")
        #expect(status["message"] as? String == "not found")

        let attributes = try #require(json["attributes"] as? [String: Any])
        #expect(attributes.count == 6)
        #expect(attributes["rpc.system"] as? String == "grpc")
        #expect((attributes["rpc.grpc.status_code"] as? NSNumber)?.int64Value == 5)
        #expect((attributes["delta"] as? NSNumber)?.int64Value == -12)
        #expect((attributes["gitaly.ratio"] as? NSNumber)?.doubleValue == 0.25)
        #expect(attributes["gitaly.cached"] as? Bool == true)
        #expect(attributes["gitaly.feature_flags.enabled"] as? [String] == ["a", "b"])

        let events = try #require(json["events"] as? [[String: Any]])
        #expect(events.count == 1)
        #expect(events[0]["name"] as? String == "first_message")
        #expect((events[0]["timeUnixNano"] as? NSNumber)?.uint64Value == 1_700_000_000_200_000_000)
        #expect(((events[0]["attributes"] as? [String: Any])?["bytes"] as? NSNumber)?.intValue == 42)
    }

    @Test("keys come in the documented order and attributes are sorted by key")
    func stableKeyOrder() throws {
        let line = SpanJSONEncoder.encode(Self.span)
        let keys = [
            "\"traceId\"", "\"spanId\"", "\"parentSpanId\"", "\"name\"", "\"kind\"", "\"startTimeUnixNano\"",
            "\"endTimeUnixNano\"", "\"status\"", "\"attributes\"", "\"delta\"", "\"gitaly.cached\"",
            "\"gitaly.feature_flags.enabled\"", "\"gitaly.ratio\"", "\"rpc.grpc.status_code\"", "\"rpc.system\"",
            "\"events\"",
        ]
        let positions = try keys.map { key in try #require(line.range(of: key)).lowerBound }
        #expect(positions == positions.sorted())
        #expect(SpanJSONEncoder.encode(Self.span) == line, "encoding is deterministic")
    }

    @Test("the exact line for a minimal root span: no parentSpanId, no status message, no events")
    func minimalRootSpanExactBytes() {
        let span = Span(
            traceID: TraceID(high: 1, low: 2), spanID: SpanID(3), name: "n", kind: .internal,
            startTimeUnixNano: 0, endTimeUnixNano: 18_446_744_073_709_551_615, status: Span.Status(code: .unset))
        #expect(
            SpanJSONEncoder.encode(span)
                == #"{"traceId":"00000000000000010000000000000002","spanId":"0000000000000003","name":"n","kind":"internal","#
                + #""startTimeUnixNano":0,"endTimeUnixNano":18446744073709551615,"status":{"code":"unset"},"attributes":{}}"#
        )
    }

    @Test("kinds and status codes are spelled as the span log defines")
    func kindAndStatusSpelling() throws {
        for (kind, text) in [(Span.Kind.server, "server"), (.client, "client"), (.internal, "internal")] {
            var span = Self.span
            span.kind = kind
            #expect(try object(span)["kind"] as? String == text)
        }
        var span = Self.span
        span.status = .ok
        let status = try #require(try object(span)["status"] as? [String: Any])
        #expect(status["code"] as? String == "ok")
        #expect(status["message"] == nil)
    }

    @Test("strings escape quotes, backslashes and every control character, and keep non-ASCII")
    func stringEscaping() throws {
        let controls = String(decoding: (0..<0x20).map { UInt8($0) }, as: UTF8.self)
        let tricky = "quote \" backslash \\ slash / tab\t newline\n cr\r nul\u{0} bell\u{7} esc\u{1B} del\u{7F} é 日本 🎉"
        var span = Self.span
        span.name = tricky
        span.status = Span.Status(code: .error, message: controls)
        span.attributes = ["key \"with\" quotes\n": .string(tricky), "list": .stringArray([controls, "\\"])]
        let line = SpanJSONEncoder.encode(span)

        #expect(!line.contains("\n"), "one span, one line")
        #expect(line.unicodeScalars.allSatisfy { $0.value >= 0x20 }, "no raw control characters")
        #expect(line.contains(#"\u0000"#))
        #expect(line.contains(#"\u001b"#))
        #expect(line.contains(#"\""#))
        #expect(line.contains(#"\\"#))

        let json = try object(span)
        #expect(json["name"] as? String == tricky)
        #expect((json["status"] as? [String: Any])?["message"] as? String == controls)
        let attributes = try #require(json["attributes"] as? [String: Any])
        #expect(attributes["key \"with\" quotes\n"] as? String == tricky)
        #expect(attributes["list"] as? [String] == [controls, "\\"])
    }

    @Test("non-finite doubles become strings; finite ones stay numbers, including tiny and huge")
    func doubles() throws {
        var span = Self.span
        span.attributes = [
            "nan": .double(.nan), "inf": .double(.infinity), "ninf": .double(-.infinity),
            "tiny": .double(1e-7), "huge": .double(1e300), "negzero": .double(-0.0), "whole": .double(3),
            "min": .double(.leastNonzeroMagnitude),
        ]
        let attributes = try #require(try object(span)["attributes"] as? [String: Any])
        #expect(attributes["nan"] as? String == "NaN")
        #expect(attributes["inf"] as? String == "Infinity")
        #expect(attributes["ninf"] as? String == "-Infinity")
        #expect((attributes["tiny"] as? NSNumber)?.doubleValue == 1e-7)
        #expect((attributes["huge"] as? NSNumber)?.doubleValue == 1e300)
        #expect((attributes["negzero"] as? NSNumber)?.doubleValue == 0)
        #expect((attributes["whole"] as? NSNumber)?.doubleValue == 3)
        #expect((attributes["min"] as? NSNumber)?.doubleValue == .leastNonzeroMagnitude)
    }

    @Test("Int64 extremes encode exactly")
    func integerExtremes() throws {
        var span = Self.span
        span.attributes = ["max": .int(.max), "min": .int(.min), "zero": .int(0)]
        let line = SpanJSONEncoder.encode(span)
        #expect(line.contains(#""max":9223372036854775807"#))
        #expect(line.contains(#""min":-9223372036854775808"#))
        #expect(line.contains(#""zero":0"#))
        _ = try object(span)
    }

    @Test("encoding into a buffer appends and adds no newline")
    func appendsIntoBuffer() {
        var buffer = Array("prefix".utf8)
        SpanJSONEncoder.encode(Self.span, into: &buffer)
        #expect(String(decoding: buffer, as: UTF8.self) == "prefix" + SpanJSONEncoder.encode(Self.span))
        #expect(buffer.last == UInt8(ascii: "}"))
    }
}
