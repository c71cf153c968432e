/// Renders spans as readable trees for a terminal, one tree per trace (used by `gitaly-tap demo`).
///
/// A span is nested under the span whose id is its parent; spans whose parent is not among them (an RPC span's
/// parent is the caller's span) are the roots. So any span another component links to an RPC span, such as the git
/// processes Trace2 reports, shows up under that RPC without changes here; `describe` can be given to render such
/// spans differently.
public struct TraceTreeFormatter: Sendable {
    /// Extra text for a span's line, or nil to use the default; lets later span kinds (git processes) add their
    /// own figures.
    public typealias Describe = @Sendable (Span) -> String?

    private let describe: Describe?

    /// A formatter; `describe` overrides the summary of the spans it returns text for.
    public init(describe: Describe? = nil) {
        self.describe = describe
    }

    /// Every trace in `spans`, the earliest first, separated by blank lines.
    public func format(_ spans: [Span]) -> String {
        var order: [TraceID] = []
        var byTrace: [TraceID: [Span]] = [:]
        for span in spans.sorted(by: { $0.startTimeUnixNano < $1.startTimeUnixNano }) {
            if byTrace[span.traceID] == nil { order.append(span.traceID) }
            byTrace[span.traceID, default: []].append(span)
        }
        return order.map { formatTrace(byTrace[$0]!).joined(separator: "\n") }.joined(separator: "\n\n")
    }

    /// The lines of one trace: a header, then its span tree.
    public func formatTrace(_ spans: [Span]) -> [String] {
        guard let first = spans.first else { return [] }
        let sorted = spans.sorted { $0.startTimeUnixNano < $1.startTimeUnixNano }
        let ids = Set(sorted.map(\.spanID))
        var children: [SpanID: [Span]] = [:]
        var roots: [Span] = []
        for span in sorted {
            if let parent = span.parentSpanID, parent != span.spanID, ids.contains(parent) {
                children[parent, default: []].append(span)
            } else {
                roots.append(span)
            }
        }
        var header = "trace \(first.traceID)"
        if case .string(let id)? = sorted.lazy.compactMap({ $0.attributes["gitlab.correlation_id"] }).first {
            header += "  correlation_id \(id)"
        }
        var lines = [header]
        var visited = Set<SpanID>()
        for (index, root) in roots.enumerated() {
            render(
                root, prefix: "", last: index == roots.count - 1, children: children, visited: &visited, into: &lines)
        }
        return lines
    }

    private func render(
        _ span: Span, prefix: String, last: Bool, children: [SpanID: [Span]], visited: inout Set<SpanID>,
        into lines: inout [String]
    ) {
        guard visited.insert(span.spanID).inserted else { return }  // a cycle in hostile input
        lines.append(prefix + (last ? "└─ " : "├─ ") + summary(span))
        let inner = prefix + (last ? "   " : "│  ")
        let kids = children[span.spanID] ?? []
        for detail in details(span) {
            lines.append(inner + (kids.isEmpty ? "   " : "│  ") + detail)
        }
        for (index, child) in kids.enumerated() {
            render(
                child, prefix: inner, last: index == kids.count - 1, children: children, visited: &visited, into: &lines
            )
        }
    }

    /// One line: name, duration, status and the span's main figures.
    public func summary(_ span: Span) -> String {
        let duration = Self.duration(span.endTimeUnixNano &- span.startTimeUnixNano)
        var status: String
        switch span.status.code {
        case .ok: status = "OK"
        case .unset: status = "-"
        case .error: status = "ERROR" + (span.status.message.map { " (\($0))" } ?? "")
        }
        if case .int(let code)? = span.attributes["rpc.grpc.status_code"], code != 0 {
            status = "\(GRPCStatusName.name(Int(code))) " + status
        }
        var line = "\(span.name)  \(duration)  \(status)"
        if let extra = describe?(span) {
            return line + (extra.isEmpty ? "" : "  " + extra)
        }
        var parts: [String] = []
        if case .string(let client)? = span.attributes["gitlab.client_name"] { parts.append("client \(client)") }
        if case .string(let path)? = span.attributes["gitaly.repository.relative_path"] { parts.append("repo \(path)") }
        let requestBytes = span.attributes["rpc.grpc.request.bytes"]
        let responseBytes = span.attributes["rpc.grpc.response.bytes"]
        if case .int(let up)? = requestBytes, case .int(let down)? = responseBytes {
            parts.append("gRPC \(Self.bytes(up)) in, \(Self.bytes(down)) out")
        }
        if !parts.isEmpty { line += "  " + parts.joined(separator: ", ") }
        return line
    }

    /// Lines under the summary: the sidechannel figures.
    public func details(_ span: Span) -> [String] {
        guard case .int(let toClient)? = span.attributes["gitaly.sidechannel.bytes_to_client"],
            case .int(let toServer)? = span.attributes["gitaly.sidechannel.bytes_to_server"]
        else { return [] }
        var line = "sidechannel"
        if case .int(let id)? = span.attributes["gitaly.sidechannel_id"] { line += " #\(id)" }
        line += ": \(Self.bytes(toServer)) to Gitaly, \(Self.bytes(toClient)) to the client"
        if case .int(let ns)? = span.attributes["gitaly.sidechannel.duration_ns"] {
            line += " in \(Self.duration(UInt64(max(0, ns))))"
        }
        var bands: [String] = []
        for (key, label) in [
            ("gitaly.sidechannel.pack_bytes", "pack"), ("gitaly.sidechannel.progress_bytes", "progress"),
            ("gitaly.sidechannel.stdout_bytes", "stdout"), ("gitaly.sidechannel.stderr_bytes", "stderr"),
        ] {
            if case .int(let n)? = span.attributes[key] { bands.append("\(label) \(Self.bytes(n))") }
        }
        if !bands.isEmpty { line += " (" + bands.joined(separator: ", ") + ")" }
        return [line]
    }

    /// `850 µs`, `12.3 ms`, `1.20 s`.
    public static func duration(_ nanoseconds: UInt64) -> String {
        if nanoseconds < 1_000_000 { return "\(nanoseconds / 1_000) µs" }
        if nanoseconds < 1_000_000_000 { return fixed(Double(nanoseconds) / 1e6, 1) + " ms" }
        return fixed(Double(nanoseconds) / 1e9, 2) + " s"
    }

    /// `512 B`, `1.5 KiB`, `3.25 MiB`.
    public static func bytes(_ count: Int64) -> String {
        if count < 1024 { return "\(count) B" }
        if count < 1024 * 1024 { return fixed(Double(count) / 1024, 1) + " KiB" }
        return fixed(Double(count) / (1024 * 1024), 2) + " MiB"
    }

    private static func fixed(_ value: Double, _ digits: Int) -> String {
        var scale = 1.0
        for _ in 0..<digits { scale *= 10 }
        let scaled = (value * scale).rounded()
        let whole = Int64(scaled / scale)
        let fraction = Int64(scaled) - whole * Int64(scale)
        var text = String(fraction)
        while text.count < digits { text = "0" + text }
        return "\(whole).\(text)"
    }
}
