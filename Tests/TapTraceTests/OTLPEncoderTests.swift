import Foundation
import Testing

@testable import TapTrace

/// A schema-less protobuf message: field number → values in order, nested messages decoded on demand.
private struct Message {
    var fields: [UInt32: [ProtobufField.Value]] = [:]
    let bytes: [UInt8]

    init(_ bytes: [UInt8]) throws {
        self.bytes = bytes
        try bytes.withUnsafeBufferPointer { buffer in
            var reader = ProtobufWireReader(buffer, range: 0..<buffer.count)
            while let field = try reader.nextField() {
                fields[field.number, default: []].append(field.value)
            }
        }
    }

    func all(_ number: UInt32) -> [ProtobufField.Value] { fields[number] ?? [] }

    func messages(_ number: UInt32) throws -> [Message] {
        try all(number).map { value in
            guard case .lengthDelimited(let range) = value else { throw DecodeError("field \(number) is not LEN") }
            return try Message(Array(bytes[range]))
        }
    }

    func message(_ number: UInt32) throws -> Message {
        let list = try messages(number)
        guard list.count == 1 else { throw DecodeError("field \(number): \(list.count) messages") }
        return list[0]
    }

    func data(_ number: UInt32) -> [UInt8]? {
        guard case .lengthDelimited(let range)? = all(number).last else { return nil }
        return Array(bytes[range])
    }

    func string(_ number: UInt32) -> String? { data(number).map { String(decoding: $0, as: UTF8.self) } }

    func varint(_ number: UInt32) -> UInt64? {
        guard case .varint(let v)? = all(number).last else { return nil }
        return v
    }

    func fixed64(_ number: UInt32) -> UInt64? {
        guard case .fixed64(let v)? = all(number).last else { return nil }
        return v
    }

    func fixed32(_ number: UInt32) -> UInt32? {
        guard case .fixed32(let v)? = all(number).last else { return nil }
        return v
    }

    /// `KeyValue` list (key = 1, value = 2) as field `number`, values decoded from `AnyValue`.
    func attributes(_ number: UInt32) throws -> [(String, AttributeValue)] {
        try messages(number).map { kv in
            let any = try kv.message(2)
            #expect(any.fields.count == 1, "AnyValue must carry exactly one field")
            let value: AttributeValue
            if let s = any.string(1) {
                value = .string(s)
            } else if let b = any.varint(2) {
                value = .bool(b != 0)
            } else if let i = any.varint(3) {
                value = .int(Int64(bitPattern: i))
            } else if let d = any.fixed64(4) {
                value = .double(Double(bitPattern: d))
            } else {
                value = .stringArray(try any.message(5).messages(1).map { $0.string(1) ?? "?" })
            }
            return (kv.string(1) ?? "", value)
        }
    }
}

private struct DecodeError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

@Suite("OTLP encoders")
struct OTLPEncoderTests {
    static let rpc = Span(
        traceID: TraceID(high: 0x4bf9_2f35_77b3_4da6, low: 0xa3ce_929d_0e0e_4736),
        spanID: SpanID(0x00f0_67aa_0ba9_02b7),
        parentSpanID: SpanID(0x53),
        name: "gitaly.CommitService/FindCommit",
        kind: .server,
        startTimeUnixNano: 1_700_000_000_123_456_789,
        endTimeUnixNano: 1_700_000_000_223_456_789,
        status: Span.Status(code: .error, message: "NOT_FOUND: no \"such\"\ncommit – ü"),
        attributes: [
            "rpc.system": .string("grpc"),
            "rpc.grpc.status_code": .int(5),
            "gitaly.ratio": .double(0.25),
            "gitaly.cached": .bool(false),
            "gitaly.feature_flags.enabled": .stringArray(["a", "b"]),
            "delta": .int(-12),
            "empty": .string(""),
            "zero": .int(0),
        ],
        events: [
            Span.Event(name: "first_message", timeUnixNano: 1_700_000_000_200_000_000, attributes: ["bytes": .int(42)])
        ],
        traceState: "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    )

    static let process = Span(
        traceID: rpc.traceID, spanID: SpanID(0xffff_ffff_ffff_fffe), parentSpanID: rpc.spanID, name: "git upload-pack",
        kind: .internal, startTimeUnixNano: 1, endTimeUnixNano: UInt64.max, status: .ok,
        attributes: ["git.argv": .stringArray([]), "git.exit_code": .int(Int64.min), "trace2.nan": .double(.nan)],
        sampled: false)

    static let root = Span(
        traceID: TraceID(high: 0, low: 1), spanID: SpanID(1), name: "connection", kind: .client, startTimeUnixNano: 5,
        endTimeUnixNano: 6, status: Span.Status(code: .unset))

    static let resource = OTLPResource(
        serviceName: "tap-under-test", serviceVersion: "9.9.9", hostName: "box-1",
        extraAttributes: ["deployment.environment.name": .string("dev")])

    // MARK: protobuf

    @Test("protobuf: resource, scope and three spans with every field decode back with the OTLP field numbers")
    func protobufRequest() throws {
        let bytes = OTLPProtobufEncoder.encode([Self.rpc, Self.process, Self.root], resource: Self.resource)
        let request = try Message(bytes)
        #expect(request.fields.keys.sorted() == [1])
        let resourceSpans = try request.message(1)
        let resourceAttributes = try resourceSpans.message(1).attributes(1)
        #expect(
            resourceAttributes.map(\.0) == [
                "service.name", "service.version", "host.name", "deployment.environment.name",
            ])
        #expect(
            resourceAttributes.map(\.1) == [
                .string("tap-under-test"), .string("9.9.9"), .string("box-1"), .string("dev"),
            ])
        let scopeSpans = try resourceSpans.message(2)
        let scope = try scopeSpans.message(1)
        #expect(scope.string(1) == "gitaly-tap")
        #expect(scope.string(2) == GitalyTapVersion.current)
        let spans = try scopeSpans.messages(2)
        #expect(spans.count == 3)

        let rpc = spans[0]
        #expect(
            rpc.data(1) == [
                0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36,
            ])
        #expect(rpc.data(2) == [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        #expect(rpc.data(4) == [0, 0, 0, 0, 0, 0, 0, 0x53])
        #expect(rpc.string(3) == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7", "trace_state, the caller's verbatim")
        #expect(rpc.string(5) == "gitaly.CommitService/FindCommit")
        #expect(rpc.varint(6) == 2)
        #expect(rpc.fixed64(7) == 1_700_000_000_123_456_789)
        #expect(rpc.fixed64(8) == 1_700_000_000_223_456_789)
        #expect(rpc.fixed32(16) == 1)
        let attributes = try rpc.attributes(9)
        // In the order the span carries them (OTLP gives attributes no order).
        #expect(attributes.map(\.0) == Self.rpc.attributes.keys)
        for (key, value) in attributes { #expect(Self.rpc.attributes[key] == value, "\(key)") }
        let event = try rpc.message(11)
        #expect(event.fixed64(1) == 1_700_000_000_200_000_000)
        #expect(event.string(2) == "first_message")
        #expect(try event.attributes(3).map(\.1) == [.int(42)])
        let status = try rpc.message(15)
        #expect(status.varint(3) == 2)
        #expect(status.string(2) == "NOT_FOUND: no \"such\"\ncommit – ü")

        let process = spans[1]
        #expect(process.varint(6) == 1)
        #expect(process.data(4) == [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        #expect(process.data(2) == [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe])
        #expect(process.fixed64(8) == UInt64.max)
        #expect(process.fixed32(16) == nil, "unsampled: no flags")
        let processAttributes = try process.attributes(9)
        #expect(processAttributes[0].1 == .stringArray([]))
        #expect(processAttributes[1].1 == .int(Int64.min))
        guard case .double(let nan) = processAttributes[2].1 else { Issue.record("not a double"); return }
        #expect(nan.isNaN)
        #expect(try process.message(15).varint(3) == 1)

        let root = spans[2]
        #expect(root.data(4) == nil, "a root span has no parent_span_id")
        #expect(root.string(3) == nil, "no tracestate: no trace_state field")
        #expect(root.varint(6) == 3)
        #expect(root.data(1) == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])
        #expect(try root.message(15).fields.isEmpty, "unset status: empty Status message")
    }

    @Test("protobuf: an empty batch is a request with a resource and scope and no spans; output is deterministic")
    func protobufEmptyAndDeterministic() throws {
        let empty = try Message(OTLPProtobufEncoder.encode([], resource: OTLPResource()))
        let scopeSpans = try empty.message(1).message(2)
        #expect(try scopeSpans.messages(2).isEmpty)
        #expect(
            try empty.message(1).message(1).attributes(1).map(\.1) == [
                .string("gitaly-tap"), .string(GitalyTapVersion.current),
            ])
        let a = OTLPProtobufEncoder.encode([Self.rpc], resource: Self.resource)
        let b = OTLPProtobufEncoder.encode([Self.rpc], resource: Self.resource)
        #expect(a == b)
    }

    @Test("protobuf: nested lengths above 127 and 16383 bytes use multi-byte varints that decode")
    func protobufLongLengths() throws {
        let long = String(repeating: "x", count: 20_000)
        var span = Self.root
        span.attributes = ["long": .string(long), "list": .stringArray(Array(repeating: "yy", count: 300))]
        let request = try Message(OTLPProtobufEncoder.encode(Array(repeating: span, count: 3), resource: Self.resource))
        let spans = try request.message(1).message(2).messages(2)
        #expect(spans.count == 3)
        let attributes = try spans[2].attributes(9)
        #expect(attributes[0].1 == .string(long))
        #expect(attributes[1].1 == .stringArray(Array(repeating: "yy", count: 300)))
    }

    // MARK: JSON

    func json(_ spans: [Span], _ resource: OTLPResource = resource) throws -> [String: Any] {
        let bytes = OTLPJSONEncoder.encode(spans, resource: resource)
        return try #require(try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])
    }

    @Test("JSON: camelCase names, hex ids, integer enums, 64-bit integers as strings, typed attribute values")
    func jsonRequest() throws {
        let root = try json([Self.rpc, Self.process, Self.root])
        let resourceSpans = try #require((root["resourceSpans"] as? [[String: Any]])?.first)
        let resource = try #require(resourceSpans["resource"] as? [String: Any])
        let resourceAttributes = try #require(resource["attributes"] as? [[String: Any]])
        #expect(
            resourceAttributes.map { $0["key"] as? String } == [
                "service.name", "service.version", "host.name", "deployment.environment.name",
            ])
        #expect((resourceAttributes[0]["value"] as? [String: Any])?["stringValue"] as? String == "tap-under-test")
        let scopeSpans = try #require((resourceSpans["scopeSpans"] as? [[String: Any]])?.first)
        let scope = try #require(scopeSpans["scope"] as? [String: Any])
        #expect(scope["name"] as? String == "gitaly-tap")
        #expect(scope["version"] as? String == GitalyTapVersion.current)
        let spans = try #require(scopeSpans["spans"] as? [[String: Any]])
        #expect(spans.count == 3)

        let rpc = spans[0]
        #expect(rpc["traceId"] as? String == "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(rpc["spanId"] as? String == "00f067aa0ba902b7")
        #expect(rpc["parentSpanId"] as? String == "0000000000000053")
        #expect(rpc["traceState"] as? String == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        #expect(spans[2]["traceState"] == nil, "no tracestate: the field is left out")
        #expect(rpc["name"] as? String == "gitaly.CommitService/FindCommit")
        #expect(rpc["kind"] as? Int == 2)
        #expect(rpc["flags"] as? Int == 1)
        #expect(rpc["startTimeUnixNano"] as? String == "1700000000123456789")
        #expect(rpc["endTimeUnixNano"] as? String == "1700000000223456789")
        let status = try #require(rpc["status"] as? [String: Any])
        #expect(status["code"] as? Int == 2)
        #expect(status["message"] as? String == "NOT_FOUND: no \"such\"\ncommit – ü")
        let attributes = try #require(rpc["attributes"] as? [[String: Any]])
        #expect(attributes.map { $0["key"] as? String ?? "" } == Self.rpc.attributes.keys)
        var values: [String: [String: Any]] = [:]
        for a in attributes { values[a["key"] as! String] = a["value"] as? [String: Any] }
        #expect(values["rpc.system"]?["stringValue"] as? String == "grpc")
        #expect(values["rpc.grpc.status_code"]?["intValue"] as? String == "5")
        #expect(values["delta"]?["intValue"] as? String == "-12")
        #expect(values["zero"]?["intValue"] as? String == "0")
        #expect(values["empty"]?["stringValue"] as? String == "")
        #expect(values["gitaly.ratio"]?["doubleValue"] as? Double == 0.25)
        let text = String(decoding: OTLPJSONEncoder.encode([Self.rpc], resource: Self.resource), as: UTF8.self)
        #expect(text.contains("{\"key\":\"gitaly.cached\",\"value\":{\"boolValue\":false}}"))
        #expect(values["gitaly.cached"]?["boolValue"] as? Bool == false)
        let list =
            (values["gitaly.feature_flags.enabled"]?["arrayValue"] as? [String: Any])?["values"] as? [[String: Any]]
        #expect(list?.map { $0["stringValue"] as? String } == ["a", "b"])
        let events = try #require(rpc["events"] as? [[String: Any]])
        #expect(events.count == 1)
        #expect(events[0]["name"] as? String == "first_message")
        #expect(events[0]["timeUnixNano"] as? String == "1700000000200000000")
        let eventAttributes = try #require(events[0]["attributes"] as? [[String: Any]])
        #expect((eventAttributes[0]["value"] as? [String: Any])?["intValue"] as? String == "42")

        let process = spans[1]
        #expect(process["kind"] as? Int == 1)
        #expect(process["flags"] == nil)
        #expect(process["endTimeUnixNano"] as? String == "18446744073709551615")
        #expect((process["status"] as? [String: Any])?["code"] as? Int == 1)
        let processAttributes = try #require(process["attributes"] as? [[String: Any]])
        #expect((processAttributes[1]["value"] as? [String: Any])?["intValue"] as? String == "-9223372036854775808")
        #expect((processAttributes[2]["value"] as? [String: Any])?["doubleValue"] as? String == "NaN")
        #expect(process["events"] == nil)

        let rootSpan = spans[2]
        #expect(rootSpan["parentSpanId"] == nil)
        #expect(rootSpan["kind"] as? Int == 3)
        #expect((rootSpan["status"] as? [String: Any])?.isEmpty == true)
    }

    @Test("JSON and protobuf carry the same span content")
    func sameContent() throws {
        let spans = [Self.rpc, Self.process, Self.root]
        let proto = try Message(OTLPProtobufEncoder.encode(spans, resource: Self.resource)).message(1).message(2)
            .messages(2)
        let root = try json(spans)
        let jsonSpans =
            ((root["resourceSpans"] as! [[String: Any]])[0]["scopeSpans"] as! [[String: Any]])[0]["spans"]
            as! [[String: Any]]
        for (p, j) in zip(proto, jsonSpans) {
            #expect(p.data(1).map { $0.map { String(format: "%02x", $0) }.joined() } == j["traceId"] as? String)
            #expect(p.data(2).map { $0.map { String(format: "%02x", $0) }.joined() } == j["spanId"] as? String)
            #expect(p.string(5) == j["name"] as? String)
            #expect(p.fixed64(7).map { "\($0)" } == j["startTimeUnixNano"] as? String)
            #expect(try p.attributes(9).map(\.0) == (j["attributes"] as! [[String: Any]]).map { $0["key"] as! String })
        }
    }
}
