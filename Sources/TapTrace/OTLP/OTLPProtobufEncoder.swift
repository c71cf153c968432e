/// Encodes spans as an OTLP `ExportTraceServiceRequest` in protobuf (the body of an OTLP/HTTP
/// `application/x-protobuf` POST to `/v1/traces`).
///
/// Field numbers are those of opentelemetry-proto v1 (`collector/trace/v1/trace_service.proto`, `trace/v1/trace.proto`,
/// `common/v1/common.proto`, `resource/v1/resource.proto`). One request carries one `ResourceSpans` with one
/// `ScopeSpans`. Attributes are written sorted by key, so the same spans always give the same bytes.
public enum OTLPProtobufEncoder {
    /// The request body for `spans`.
    public static func encode(_ spans: [Span], resource: OTLPResource) -> [UInt8] {
        var writer = ProtobufWriter(reservingCapacity: 256 + spans.count * 512)
        // ExportTraceServiceRequest.resource_spans = 1
        writer.message(1) { resourceSpans in
            // ResourceSpans.resource = 1
            resourceSpans.message(1) { r in
                for (key, value) in resource.attributes {
                    // Resource.attributes = 1
                    keyValue(1, key, value, into: &r)
                }
            }
            // ResourceSpans.scope_spans = 2
            resourceSpans.message(2) { scopeSpans in
                // ScopeSpans.scope = 1: InstrumentationScope name = 1, version = 2
                scopeSpans.message(1) { scope in
                    scope.string(1, resource.scopeName)
                    scope.string(2, resource.scopeVersion)
                }
                for span in spans {
                    // ScopeSpans.spans = 2
                    scopeSpans.message(2) { encodeSpan(span, into: &$0) }
                }
            }
        }
        return writer.bytes
    }

    /// One `Span` message's fields.
    private static func encodeSpan(_ span: Span, into w: inout ProtobufWriter) {
        w.bigEndianID(1, span.traceID.high, span.traceID.low)  // trace_id
        w.bigEndianID(2, span.spanID.value)  // span_id
        if let traceState = span.traceState, !traceState.isEmpty {
            w.string(3, traceState)  // trace_state
        }
        if let parent = span.parentSpanID, parent.isValid {
            w.bigEndianID(4, parent.value)  // parent_span_id
        }
        w.string(5, span.name)  // name
        w.uint64(6, OTLPEnums.kind(span.kind))  // kind
        w.fixed64(7, span.startTimeUnixNano)  // start_time_unix_nano
        w.fixed64(8, span.endTimeUnixNano)  // end_time_unix_nano
        // In the order the tap set them: OTLP gives attributes no order.
        for (key, value) in span.attributes {
            keyValue(9, key, value, into: &w)  // attributes
        }
        for event in span.events {
            w.message(11) { e in  // events
                e.fixed64(1, event.timeUnixNano)  // time_unix_nano
                e.string(2, event.name)  // name
                for (key, value) in event.attributes {
                    keyValue(3, key, value, into: &e)  // attributes
                }
            }
        }
        w.message(15) { s in  // status
            if let message = span.status.message, !message.isEmpty { s.string(2, message) }  // message
            let code = OTLPEnums.statusCode(span.status.code)
            if code != 0 { s.uint64(3, code) }  // code
        }
        let flags = OTLPEnums.flags(span)
        if flags != 0 { w.fixed32(16, flags) }  // flags
    }

    /// A `KeyValue` (key = 1, value = 2) as field `field` of the enclosing message.
    private static func keyValue(_ field: UInt32, _ key: String, _ value: AttributeValue, into w: inout ProtobufWriter)
    {
        w.message(field) { kv in
            kv.string(1, key)
            kv.message(2) { anyValue(value, into: &$0) }
        }
    }

    /// An `AnyValue`'s one field. The value sits in a oneof, so it is written even when it is the default (`""`, 0,
    /// false): an absent field would mean "no value".
    private static func anyValue(_ value: AttributeValue, into w: inout ProtobufWriter) {
        switch value {
        case .string(let text): w.string(1, text)  // string_value
        case .bool(let flag): w.bool(2, flag)  // bool_value
        case .int(let number): w.int64(3, number)  // int_value
        case .double(let number): w.double(4, number)  // double_value
        case .stringArray(let texts):
            w.message(5) { array in  // array_value
                for text in texts {
                    array.message(1) { $0.string(1, text) }  // ArrayValue.values = 1
                }
            }
        }
    }
}
