import Synchronization
import TapTrace

/// The tap's Prometheus metrics. gRPC call metrics use the names and labels of Gitaly's own
/// (go-grpc-prometheus) server metrics, so dashboards built for Gitaly work when pointed at the tap.
///
/// Updated from the span pipeline's task (never from an event loop); read by the metrics endpoint.
public final class TapMetrics: SpanSink {
    /// Gitaly's default `grpc_latency_buckets`.
    public static let latencyBuckets: [Double] = [0.001, 0.005, 0.025, 0.1, 0.5, 1, 10, 30, 60, 300, 1500]

    struct CallKey: Hashable {
        var service: String
        var method: String
    }

    /// Streaming seen on a method so far (client side, server side).
    struct Streaming {
        var client = false
        var server = false
    }

    struct Histogram {
        var buckets: [UInt64]
        var count: UInt64 = 0
        var sum: Double = 0
    }

    struct State {
        var started: [CallKey: UInt64] = [:]
        var handled: [CallKey: [String: UInt64]] = [:]
        var handling: [CallKey: Histogram] = [:]
        var received: [CallKey: UInt64] = [:]
        var sent: [CallKey: UInt64] = [:]
        var bytes: [String: UInt64] = ["to_server": 0, "to_client": 0]
        var connections: [String: UInt64] = [:]
        var decodingStopped: [String: UInt64] = [:]
        var sidechannelBytes: [String: UInt64] = ["to_server": 0, "to_client": 0]
        var gitProcesses: UInt64 = 0
        var streaming: [CallKey: Streaming] = [:]
    }

    private let state = Mutex(State())
    /// Gauges read at scrape time (open connections, queue counters), registered by the runtime.
    private let gauges = Mutex<[(name: String, help: String, type: String, read: @Sendable () -> [(labels: String, value: Double)])]>([])

    public init() {}

    /// Registers a value read at each scrape.
    public func register(
        name: String, help: String, type: String = "gauge", _ read: @escaping @Sendable () -> [(labels: String, value: Double)]
    ) {
        gauges.withLock { $0.append((name, help, type, read)) }
    }

    public func write(_ span: Span) {
        let a = span.attributes
        if case .string(let system) = a["rpc.system"], system == "grpc",
            case .string(let service) = a["rpc.service"], case .string(let method) = a["rpc.method"]
        {
            recordCall(span, service: service, method: method)
        } else if a["trace2.sid"] != nil {
            // Only a process span carries its Trace2 session id; names do not tell (bare `git` is named "git").
            state.withLock { $0.gitProcesses += 1 }
        }
    }

    public func flush() {}

    /// A connection ended (all kinds, including the ones whose calls already have spans).
    public func connectionClosed(_ summary: ConnectionSummary) {
        state.withLock { s in
            s.bytes["to_server", default: 0] += UInt64(summary.bytesToServer)
            s.bytes["to_client", default: 0] += UInt64(summary.bytesToClient)
            s.connections[summary.kind, default: 0] += 1
        }
    }

    /// A connection's decoding stopped (forwarding goes on): counted now, not when the connection ends, so a
    /// long-lived connection whose decoder gave up shows at once.
    public func decodingStopped(reason: String) {
        state.withLock { $0.decodingStopped[Self.reasonClass(reason), default: 0] += 1 }
    }

    private func recordCall(_ span: Span, service: String, method: String) {
        let a = span.attributes
        let requests = Self.int(a["rpc.grpc.request.messages"])
        let responses = Self.int(a["rpc.grpc.response.messages"])
        let key = CallKey(service: service, method: method)
        let code = Self.codeName(span)
        let seconds = Double(span.endTimeUnixNano &- span.startTimeUnixNano) / 1e9
        state.withLock { s in
            var streaming = s.streaming[key] ?? Self.gitalyStreaming["\(service)/\(method)"] ?? Streaming()
            streaming.client = streaming.client || requests > 1
            streaming.server = streaming.server || responses > 1
            s.streaming[key] = streaming
            s.started[key, default: 0] += 1
            s.handled[key, default: [:]][code, default: 0] += 1
            var h = s.handling[key] ?? Histogram(buckets: Array(repeating: 0, count: Self.latencyBuckets.count))
            for (i, bound) in Self.latencyBuckets.enumerated() where seconds <= bound { h.buckets[i] += 1 }
            h.count += 1
            h.sum += seconds
            s.handling[key] = h
            s.received[key, default: 0] += UInt64(max(0, requests))
            s.sent[key, default: 0] += UInt64(max(0, responses))
            if case .int(let up) = a["gitaly.sidechannel.bytes_to_server"] { s.sidechannelBytes["to_server", default: 0] += UInt64(up) }
            if case .int(let down) = a["gitaly.sidechannel.bytes_to_client"] { s.sidechannelBytes["to_client", default: 0] += UInt64(down) }
        }
    }

    /// The Prometheus text exposition (version 0.0.4).
    public func render() -> String {
        var out = ""
        let s = state.withLock { $0 }
        func labels(_ k: CallKey) -> String {
            let streaming = s.streaming[k] ?? Streaming()
            let type = Self.grpcType(clientStreaming: streaming.client, serverStreaming: streaming.server)
            return "grpc_method=\"\(escape(k.method))\",grpc_service=\"\(escape(k.service))\",grpc_type=\"\(type)\""
        }
        out += "# HELP grpc_server_started_total Total number of RPCs started on the server (seen by gitaly-tap).\n# TYPE grpc_server_started_total counter\n"
        for (k, v) in s.started.sorted(by: { labels($0.key) < labels($1.key) }) {
            out += "grpc_server_started_total{\(labels(k))} \(v)\n"
        }
        out += "# HELP grpc_server_handled_total Total number of RPCs completed on the server, regardless of success or failure.\n# TYPE grpc_server_handled_total counter\n"
        for (k, codes) in s.handled.sorted(by: { labels($0.key) < labels($1.key) }) {
            for (code, v) in codes.sorted(by: { $0.key < $1.key }) {
                out += "grpc_server_handled_total{grpc_code=\"\(code)\",\(labels(k))} \(v)\n"
            }
        }
        out += "# HELP grpc_server_handling_seconds Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.\n# TYPE grpc_server_handling_seconds histogram\n"
        for (k, h) in s.handling.sorted(by: { labels($0.key) < labels($1.key) }) {
            for (i, bound) in Self.latencyBuckets.enumerated() {
                out += "grpc_server_handling_seconds_bucket{\(labels(k)),le=\"\(Self.format(bound))\"} \(h.buckets[i])\n"
            }
            out += "grpc_server_handling_seconds_bucket{\(labels(k)),le=\"+Inf\"} \(h.count)\n"
            out += "grpc_server_handling_seconds_sum{\(labels(k))} \(Self.format(h.sum))\n"
            out += "grpc_server_handling_seconds_count{\(labels(k))} \(h.count)\n"
        }
        out += "# HELP grpc_server_msg_received_total Total number of RPC stream messages received on the server.\n# TYPE grpc_server_msg_received_total counter\n"
        for (k, v) in s.received.sorted(by: { labels($0.key) < labels($1.key) }) {
            out += "grpc_server_msg_received_total{\(labels(k))} \(v)\n"
        }
        out += "# HELP grpc_server_msg_sent_total Total number of gRPC stream messages sent by the server.\n# TYPE grpc_server_msg_sent_total counter\n"
        for (k, v) in s.sent.sorted(by: { labels($0.key) < labels($1.key) }) {
            out += "grpc_server_msg_sent_total{\(labels(k))} \(v)\n"
        }
        out += "# HELP gitaly_tap_forwarded_bytes_total Bytes forwarded, counted when a connection closes.\n# TYPE gitaly_tap_forwarded_bytes_total counter\n"
        for (d, v) in s.bytes.sorted(by: { $0.key < $1.key }) { out += "gitaly_tap_forwarded_bytes_total{direction=\"\(d)\"} \(v)\n" }
        out += "# HELP gitaly_tap_sidechannel_bytes_total Bytes moved through sidechannels, by direction.\n# TYPE gitaly_tap_sidechannel_bytes_total counter\n"
        for (d, v) in s.sidechannelBytes.sorted(by: { $0.key < $1.key }) { out += "gitaly_tap_sidechannel_bytes_total{direction=\"\(d)\"} \(v)\n" }
        out += "# HELP gitaly_tap_connections_total Connections closed, by kind (http2, backchannel, opaque, undetermined).\n# TYPE gitaly_tap_connections_total counter\n"
        for (k, v) in s.connections.sorted(by: { $0.key < $1.key }) { out += "gitaly_tap_connections_total{kind=\"\(k)\"} \(v)\n" }
        out += "# HELP gitaly_tap_decoding_stopped_total Connections whose decoding stopped (forwarding went on), by reason; counted when it stops.\n# TYPE gitaly_tap_decoding_stopped_total counter\n"
        for (k, v) in s.decodingStopped.sorted(by: { $0.key < $1.key }) { out += "gitaly_tap_decoding_stopped_total{reason=\"\(escape(k))\"} \(v)\n" }
        out += "# HELP gitaly_tap_git_process_spans_total Git process spans built from Trace2.\n# TYPE gitaly_tap_git_process_spans_total counter\n"
        out += "gitaly_tap_git_process_spans_total \(s.gitProcesses)\n"
        for gauge in gauges.withLock({ $0 }) {
            out += "# HELP \(gauge.name) \(gauge.help)\n# TYPE \(gauge.name) \(gauge.type)\n"
            for (l, v) in gauge.read() {
                out += l.isEmpty ? "\(gauge.name) \(Self.format(v))\n" : "\(gauge.name){\(l)} \(Self.format(v))\n"
            }
        }
        return out
    }

    /// go-grpc-prometheus's `grpc_type`. The wire does not say whether a method streams: Gitaly's methods come from
    /// its protos (`gitalyStreaming`, generated); any other method's type is learned: once a call had more than one
    /// request (response) message, the method counts as client (server) streaming, and all its series carry it.
    static func grpcType(clientStreaming: Bool, serverStreaming: Bool) -> String {
        switch (clientStreaming, serverStreaming) {
        case (false, false): "unary"
        case (true, false): "client_stream"
        case (false, true): "server_stream"
        case (true, true): "bidi_stream"
        }
    }

    /// grpc-go's `codes.Code.String()` names, as Gitaly's metrics carry them.
    static func codeName(_ span: Span) -> String {
        guard case .int(let code) = span.attributes["rpc.grpc.status_code"] else {
            // No status on the wire: the call was reset or lost.
            return span.status.message?.hasPrefix("DEADLINE_EXCEEDED") == true ? "DeadlineExceeded" : "Canceled"
        }
        let names = [
            "OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound", "AlreadyExists",
            "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted", "OutOfRange", "Unimplemented",
            "Internal", "Unavailable", "DataLoss", "Unauthenticated",
        ]
        return names.indices.contains(Int(code)) ? names[Int(code)] : "Code(\(code))"
    }

    /// A bounded label value for a free-text reason: its words up to the first number or quote.
    static func reasonClass(_ reason: String) -> String {
        var words: [Substring] = []
        for word in reason.split(separator: " ") {
            if word.contains(where: { $0.isNumber || $0 == "'" || $0 == "\"" }) || words.count == 6 { break }
            words.append(word)
        }
        return words.joined(separator: " ")
    }

    private static func int(_ value: AttributeValue?) -> Int {
        if case .int(let v) = value { return Int(v) }
        return 0
    }

    static func format(_ value: Double) -> String {
        if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
        return String(value)
    }

    private func escape(_ value: String) -> String {
        var out = ""
        for c in value {
            switch c {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(c)
            }
        }
        return out
    }
}
