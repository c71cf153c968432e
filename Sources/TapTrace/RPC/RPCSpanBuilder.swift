import TapWire

/// Turns a finished gRPC call and its connection into the one span the tap records for it.
///
/// The span continues the caller's trace when the request carried a valid context (traceparent, then
/// uber-trace-id, then B3), else it starts a new trace. Pure apart from the random id source.
public struct RPCSpanBuilder: Sendable {
    public init() {}

    /// The RPC span for `record`.
    public func span(for record: GRPCCallRecord, connection: ConnectionInfo) -> Span {
        var generator = SystemRandomNumberGenerator()
        return span(for: record, connection: connection, using: &generator)
    }

    /// The RPC span for `record`, drawing new ids from `generator`.
    public func span<G: RandomNumberGenerator>(
        for record: GRPCCallRecord, connection: ConnectionInfo, using generator: inout G
    ) -> Span {
        var names = MethodNames()
        return span(for: record, connection: connection, using: &generator, names: &names)
    }

    /// The RPC span for `record`, drawing new ids from `generator` and taking the names of its method from `names`
    /// (what a caller that builds many spans keeps between them).
    public func span<G: RandomNumberGenerator>(
        for record: GRPCCallRecord, connection: ConnectionInfo, using generator: inout G, names: inout MethodNames
    ) -> Span {
        let method = names.names(for: record)
        let metadata = record.requestMetadata
        let extraction = TraceContextExtractor.extract(from: metadata)
        // One allocation for the metadata's attributes and the builder's own (up to about 30 with a sidechannel).
        var attributes = GitLabMetadata.attributes(from: metadata, capacity: metadata.count + 32)

        attributes.append("rpc.system", .string("grpc"))
        if let service = method.service, let method = method.method {
            attributes.append("rpc.service", .string(service))
            attributes.append("rpc.method", .string(method))
        }
        if let status = record.grpcStatus { attributes.append("rpc.grpc.status_code", .int(Int64(status))) }
        attributes.append("network.transport", .string(connection.transport))
        if !connection.peer.isEmpty { attributes.append("network.peer.address", .string(connection.peer)) }
        attributes.append("server.address", .string(connection.upstreamAddress))
        attributes.append("tap.connection.id", .int(Int64(connection.id)))
        attributes.append("tap.stream.id", .int(Int64(record.streamID)))
        if let authority = record.authority { attributes.append("rpc.grpc.authority", .string(authority)) }
        if let timeout = record.timeoutNanos { attributes.append("rpc.grpc.timeout_ns", .int(timeout)) }
        if let encoding = record.requestEncoding { attributes.append("rpc.grpc.request.encoding", .string(encoding)) }
        if let http = record.httpStatus, http != 200 { attributes.append("http.response.status_code", .int(Int64(http))) }
        attributes.append("rpc.grpc.request.messages", .int(Int64(record.requestMessages)))
        attributes.append("rpc.grpc.request.bytes", .int(Int64(record.requestBytes)))
        attributes.append("rpc.grpc.response.messages", .int(Int64(record.responseMessages)))
        attributes.append("rpc.grpc.response.bytes", .int(Int64(record.responseBytes)))
        if let first = record.firstResponseTime, first >= record.startTime {
            attributes.append("rpc.grpc.time_to_first_response_ns", .int(Int64(first - record.startTime)))
        }
        if let requestEnd = record.requestEndTime, requestEnd >= record.startTime {
            attributes.append("rpc.grpc.request.duration_ns", .int(Int64(requestEnd - record.startTime)))
        }
        attributes.append("rpc.grpc.end", .string(Self.endName(record.end)))
        if let yamux = record.yamuxStreamID {
            attributes.append("tap.yamux.stream.id", .int(Int64(yamux)))
            attributes.append("gitaly.backchannel", .bool(true))
            if record.fromGitaly { attributes.append("gitaly.backchannel.from_gitaly", .bool(true)) }
        }
        var events: [Span.Event] = []
        if let sidechannel = record.sidechannel {
            Self.addSidechannel(sidechannel, ssh: method.service == "gitaly.SSHService", to: &attributes, events: &events)
        }
        if let message = record.firstRequestMessage, !record.firstRequestMessageCompressed,
            let repository = RepositoryExtractor.extract(fromRequest: message.readableBytesView)
        {
            for (key, value) in repository.attributes { attributes.append(key, value) }
        }

        var traceID: TraceID
        var parent: SpanID? = nil
        var sampled = true
        var traceState: String? = nil
        if let context = extraction.context {
            traceID = context.traceID
            parent = context.parentSpanID
            sampled = context.sampled
            traceState = context.traceState
            attributes.append("tap.trace.propagation", .string(context.format.rawValue))
        } else {
            traceID = TraceID.random(using: &generator)
        }
        if !extraction.malformed.isEmpty {
            attributes.append("tap.trace.malformed_headers", .stringArray(extraction.malformed))
        }

        return Span(
            traceID: traceID,
            spanID: SpanID.random(using: &generator),
            parentSpanID: parent,
            name: method.spanName,
            kind: .server,
            startTimeUnixNano: record.startTime,
            endTimeUnixNano: max(record.endTime, record.startTime),
            status: Self.status(record),
            attributes: attributes,
            events: events,
            sampled: sampled,
            traceState: traceState)
    }

    /// A span for a connection the tap could not decode into calls (opaque bytes, an undecoded backchannel,
    /// or one whose decoding stopped); nil for connections whose calls already have spans.
    public func connectionSpan(for summary: ConnectionSummary) -> Span? {
        guard summary.kind != "http2" || summary.decodingStopped != nil else { return nil }
        var generator = SystemRandomNumberGenerator()
        var attributes: SpanAttributes = [
            "network.transport": .string(summary.info.transport),
            "server.address": .string(summary.info.upstreamAddress),
            "tap.connection.id": .int(Int64(summary.info.id)),
            "tap.connection.kind": .string(summary.kind),
            "tap.connection.bytes_to_server": .int(Int64(summary.bytesToServer)),
            "tap.connection.bytes_to_client": .int(Int64(summary.bytesToClient)),
            "tap.connection.close_reason": .string(summary.closeReason),
            "tap.connection.calls": .int(Int64(summary.calls)),
        ]
        if !summary.info.peer.isEmpty { attributes["network.peer.address"] = .string(summary.info.peer) }
        if let stopped = summary.decodingStopped { attributes["tap.decoding.stopped"] = .string(stopped) }
        return Span(
            traceID: TraceID.random(using: &generator),
            spanID: SpanID.random(using: &generator),
            name: "gitaly-tap/connection",
            kind: .server,
            startTimeUnixNano: summary.info.startTimeUnixNano,
            endTimeUnixNano: max(summary.endTimeUnixNano, summary.info.startTimeUnixNano),
            status: summary.closeReason.hasPrefix("reset") || summary.closeReason.contains("error")
                ? .init(code: .error, message: summary.closeReason) : .ok,
            attributes: attributes)
    }

    /// Sidechannel figures: bytes each way, duration, and the band split (SSH: stdout/stderr; HTTP: pack/progress).
    static func addSidechannel(
        _ sidechannel: SidechannelRecord, ssh: Bool, to attributes: inout SpanAttributes,
        events: inout [Span.Event]
    ) {
        attributes.append("gitaly.sidechannel.bytes_to_server", .int(Int64(sidechannel.bytesToServer)))
        attributes.append("gitaly.sidechannel.bytes_to_client", .int(Int64(sidechannel.bytesToClient)))
        if sidechannel.endTime >= sidechannel.openTime {
            attributes.append("gitaly.sidechannel.duration_ns", .int(Int64(sidechannel.endTime - sidechannel.openTime)))
        }
        // Each way: from the sidechannel's opening to the last byte that went that way.
        if let last = sidechannel.lastToServerTime, last >= sidechannel.openTime {
            attributes.append("gitaly.sidechannel.to_server_duration_ns", .int(Int64(last - sidechannel.openTime)))
        }
        if let last = sidechannel.lastToClientTime, last >= sidechannel.openTime {
            attributes.append("gitaly.sidechannel.to_client_duration_ns", .int(Int64(last - sidechannel.openTime)))
        }
        if let first = sidechannel.firstToClientTime, first >= sidechannel.openTime {
            attributes.append("gitaly.sidechannel.time_to_first_byte_to_client_ns", .int(Int64(first - sidechannel.openTime)))
        }
        attributes.append("gitaly.sidechannel.yamux_stream_id", .int(Int64(sidechannel.yamuxStreamID)))
        switch sidechannel.end {
        case .closed: attributes.append("gitaly.sidechannel.end", .string("closed"))
        case .reset(let by):
            attributes.append("gitaly.sidechannel.end", .string(by == .clientToServer ? "reset_by_client" : "reset_by_gitaly"))
        case .connectionLost: attributes.append("gitaly.sidechannel.end", .string("connection_lost"))
        }
        if let bands = sidechannel.serverBands {
            attributes.append(ssh ? "gitaly.sidechannel.stdout_bytes" : "gitaly.sidechannel.pack_bytes", .int(Int64(bands[1])))
            attributes.append(ssh ? "gitaly.sidechannel.stderr_bytes" : "gitaly.sidechannel.progress_bytes", .int(Int64(bands[2])))
            if bands[3] > 0 { attributes.append("gitaly.sidechannel.error_bytes", .int(Int64(bands[3]))) }
        }
        events.append(.init(name: "sidechannel.open", timeUnixNano: sidechannel.openTime))
        if let done = sidechannel.clientDoneTime {
            events.append(.init(name: "sidechannel.client_done", timeUnixNano: done))
        }
        if sidechannel.endTime > 0 {
            events.append(.init(name: "sidechannel.close", timeUnixNano: sidechannel.endTime))
        }
    }

    static func endName(_ end: GRPCCallRecord.End) -> String {
        switch end {
        case .trailers: "trailers"
        case .trailersOnly: "trailers_only"
        case .reset: "reset"
        case .refusedByGoAway: "refused_by_goaway"
        case .connectionLost: "connection_lost"
        case .decodingStopped: "decoding_stopped"
        }
    }

    /// The span status for how `record` ended (gRPC status, reset, lost connection, ...).
    public static func status(_ record: GRPCCallRecord) -> Span.Status {
        switch record.end {
        case .trailers, .trailersOnly:
            guard let code = record.grpcStatus else {
                let http = record.httpStatus.map { " (HTTP status \($0))" } ?? ""
                return .init(code: .error, message: "response ended without grpc-status\(http)")
            }
            if code == 0 { return .ok }
            let text = record.grpcMessage.map { "\(GRPCStatusName.name(code)): \($0)" } ?? GRPCStatusName.name(code)
            return .init(code: .error, message: text)
        case .reset(let by, let code):
            let who = by == .clientToServer ? "client" : "server"
            let reset = "stream reset by \(who) (\(HTTP2ErrorCode.name(code)))"
            // A client cancels with RST_STREAM when its deadline passes; say so when the timing shows it. Clients
            // round `grpc-timeout` up (and the tap sees the headers after they were sent), so allow a little slack.
            if by == .clientToServer, let timeout = record.timeoutNanos, timeout > 0,
                record.endTime >= record.startTime,
                Int64(record.endTime - record.startTime) >= timeout - max(timeout / 20, 10_000_000)
            {
                return .init(
                    code: .error,
                    message: "DEADLINE_EXCEEDED: the client's \(timeout / 1_000_000) ms deadline passed; \(reset)")
            }
            return .init(code: .error, message: reset)
        case .refusedByGoAway(let code):
            return .init(code: .error, message: "refused by the server's GOAWAY (\(HTTP2ErrorCode.name(code)))")
        case .connectionLost:
            return .init(code: .error, message: "connection lost before the call ended")
        case .decodingStopped(let reason):
            return .init(code: .error, message: "decoding stopped before the call ended: \(reason)")
        }
    }
}

/// The span name, service and method of the last few paths a span builder saw.
///
/// A Gitaly serves a few dozen methods, and making the three strings anew for every call cost a tenth of building
/// its span; calls of the same method now share them.
public struct MethodNames: Sendable {
    struct Entry: Sendable {
        var path: String
        /// The path without its leading `/`.
        var spanName: String
        var service: String?
        var method: String?
    }

    /// Most recently used first.
    private var entries: [Entry] = []
    private static let capacity = 8
    /// Longer paths are not kept: gRPC paths are far shorter, and a hostile client's megabyte path should not stay
    /// in memory after its call.
    private static let longestKept = 256

    public init() {}

    /// The names for `record`'s path.
    mutating func names(for record: GRPCCallRecord) -> Entry {
        let path = record.path
        if let index = entries.firstIndex(where: { $0.path == path }) {
            if index > 0 { entries.swapAt(index, 0) }
            return entries[0]
        }
        let parts = record.serviceAndMethod
        let entry = Entry(
            path: path, spanName: path.hasPrefix("/") ? String(path.dropFirst()) : path,
            service: parts?.service, method: parts?.method)
        guard path.utf8.count <= Self.longestKept else { return entry }
        if entries.count == Self.capacity { entries.removeLast() }
        entries.insert(entry, at: 0)
        return entry
    }
}
