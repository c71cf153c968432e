import NIOCore
import TapWire

/// What `gitaly-tap inspect` prints: a readable summary, or every call and message as JSON lines.
public enum SessionReport {
    /// The readable summary: how the files ended, calls per method with statuses, sizes and durations, one line per
    /// call, sidechannels and notices.
    public static func summary(_ session: RecordedSession, path: String) -> String {
        var out: [String] = []
        out.append("recording \(path): \(session.tails.count) file(s)")
        for (file, tail) in session.tails {
            out.append("  \(file): \(describe(tail))")
        }
        if let first = session.segments.first {
            out.append(
                "  listen \(first.listen) → upstream \(first.upstream); caps: \(first.maxMessageBytes) B per message, "
                    + "\(first.maxFileBytes) B per file; personal metadata redacted: \(first.personalMetadataRedacted ? "yes" : "no")"
            )
        }
        let calls = session.calls
        out.append(
            "connections: \(session.connections.count), calls: \(calls.count), sidechannels: \(session.sidechannels.count), "
                + "notices: \(session.notices.count)")
        out.append("")
        out.append(
            pad("method", 48) + lpad("calls", 6) + "  " + pad("statuses", 26) + lpad("req msgs", 9)
                + lpad("req bytes", 12)
                + lpad("resp msgs", 10) + lpad("resp bytes", 12) + lpad("p50 ms", 10) + lpad("max ms", 10))
        var order: [String] = []
        var byMethod: [String: [RecordedCall]] = [:]
        for call in calls {
            if byMethod[call.path] == nil { order.append(call.path) }
            byMethod[call.path, default: []].append(call)
        }
        for method in order {
            let group = byMethod[method]!
            var statuses: [String: Int] = [:]
            for call in group { statuses[call.statusName, default: 0] += 1 }
            let statusText = statuses.sorted { $0.key < $1.key }.map { "\($0.key)×\($0.value)" }.joined(separator: " ")
            let durations = group.compactMap(\.duration).sorted()
            out.append(
                pad(method, 48) + lpad("\(group.count)", 6) + "  " + pad(statusText, 26)
                    + lpad("\(group.reduce(0) { $0 + $1.requests.count })", 9)
                    + lpad("\(group.reduce(0) { $0 + $1.requests.reduce(0) { $0 + $1.length } })", 12)
                    + lpad("\(group.reduce(0) { $0 + $1.responses.count })", 10)
                    + lpad("\(group.reduce(0) { $0 + $1.responses.reduce(0) { $0 + $1.length } })", 12)
                    + lpad(millis(percentile(durations, 0.5)), 10) + lpad(millis(durations.last), 10))
        }
        out.append("")
        out.append("calls:")
        let origin = calls.first?.startTime ?? 0
        for call in calls {
            var line =
                "  #\(call.id) +\(millis(call.startTime >= origin ? call.startTime - origin : 0)) ms conn \(call.connection) "
                + "\(call.path) \(call.statusName)"
            if !call.statusMessage.isEmpty { line += " (\(call.statusMessage))" }
            line +=
                " req \(call.requests.count) msg/\(call.requests.reduce(0) { $0 + $1.length }) B, resp \(call.responses.count) msg/"
                + "\(call.responses.reduce(0) { $0 + $1.length }) B, \(millis(call.duration)) ms"
            if call.requests.contains(where: \.truncated) || call.responses.contains(where: \.truncated) {
                line += " [payload cut at the cap]"
            }
            out.append(line)
        }
        if !session.sidechannels.isEmpty {
            out.append("sidechannels:")
            for sc in session.sidechannels {
                out.append(
                    "  #\(sc.id) id \(sc.sidechannelID) conn \(sc.connection): to server \(sc.bytesToServer) B, to client "
                        + "\(sc.bytesToClient) B\(sc.cut ? " (cut: stored \(sc.storedToServer)/\(sc.storedToClient) B)" : "")"
                )
            }
        }
        if !session.notices.isEmpty {
            out.append("notices:")
            for notice in session.notices { out.append("  \(notice.text)") }
        }
        return out.joined(separator: "\n") + "\n"
    }

    /// How a file ended, in words.
    public static func describe(_ tail: RecordTail) -> String {
        switch tail {
        case .complete: "complete"
        case .unterminated: "no end marker (the recorder was stopped before closing it); every record is sound"
        case .torn(let offset, let bytes, let reason):
            "torn tail at byte \(offset): \(bytes) byte(s) skipped (\(reason)); everything before is sound"
        }
    }

    /// JSON lines: one `file` line per file, then one `call` line per call followed by its `message` lines (payloads
    /// base64), then `sidechannel` and `notice` lines.
    public static func jsonLines(_ session: RecordedSession, write: (String) -> Void) {
        for (i, (file, tail)) in session.tails.enumerated() {
            var fields: [(String, String)] = [("type", JSONText.string("file")), ("path", JSONText.string(file))]
            switch tail {
            case .complete: fields.append(("tail", JSONText.string("complete")))
            case .unterminated: fields.append(("tail", JSONText.string("unterminated")))
            case .torn(let offset, let bytes, let reason):
                fields += [
                    ("tail", JSONText.string("torn")), ("tornOffset", "\(offset)"), ("tornBytes", "\(bytes)"),
                    ("tornReason", JSONText.string(reason)),
                ]
            }
            if i < session.segments.count {
                let s = session.segments[i]
                fields += [
                    ("sessionId", JSONText.string(s.sessionID.map { String(format2: $0) }.joined())),
                    ("index", "\(s.index)"), ("created", "\(s.createdTime)"), ("listen", JSONText.string(s.listen)),
                    ("upstream", JSONText.string(s.upstream)), ("maxMessageBytes", "\(s.maxMessageBytes)"),
                    ("maxFileBytes", "\(s.maxFileBytes)"),
                    ("personalMetadataRedacted", "\(s.personalMetadataRedacted)"),
                ]
            }
            write(JSONText.object(fields))
        }
        for call in session.calls {
            var fields: [(String, String)] = [
                ("type", JSONText.string("call")), ("id", "\(call.id)"), ("connection", "\(call.connection)"),
                ("method", JSONText.string(call.path)), ("fromGitaly", "\(call.fromGitaly)"),
                ("startTimeUnixNano", "\(call.startTime)"),
                ("endTimeUnixNano", call.endTime.map { "\($0)" } ?? "null"),
                ("durationNanos", call.duration.map { "\($0)" } ?? "null"),
                ("status", call.statusCode.map { "\($0)" } ?? "null"), ("statusName", JSONText.string(call.statusName)),
                ("statusMessage", JSONText.string(call.statusMessage)), ("end", JSONText.string(endName(call.end))),
                ("requestHeaders", headers(call.requestHeaders)),
                ("responseHeaders", call.responseHeaders.map(headers) ?? "null"),
                ("trailers", call.trailers.map(headers) ?? "null"), ("trailersOnly", "\(call.trailersOnly)"),
                ("requestMessages", "\(call.requests.count)"),
                ("requestBytes", "\(call.requests.reduce(0) { $0 + $1.length })"),
                ("responseMessages", "\(call.responses.count)"),
                ("responseBytes", "\(call.responses.reduce(0) { $0 + $1.length })"),
            ]
            if let t = call.requestEndTime { fields.append(("requestEndTimeUnixNano", "\(t)")) }
            write(JSONText.object(fields))
            for (direction, messages) in [("request", call.requests), ("response", call.responses)] {
                for (i, m) in messages.enumerated() {
                    write(
                        JSONText.object([
                            ("type", JSONText.string("message")), ("call", "\(call.id)"),
                            ("direction", JSONText.string(direction)), ("index", "\(i)"), ("timeUnixNano", "\(m.time)"),
                            ("compressed", "\(m.compressed)"), ("length", "\(m.length)"),
                            ("truncated", "\(m.truncated)"),
                            ("payload", JSONText.string(JSONText.base64(m.payload.readableBytesView))),
                        ]))
                }
            }
        }
        for sc in session.sidechannels {
            write(
                JSONText.object([
                    ("type", JSONText.string("sidechannel")), ("id", "\(sc.id)"), ("connection", "\(sc.connection)"),
                    ("sidechannelId", "\(sc.sidechannelID)"), ("openTimeUnixNano", "\(sc.openTime)"),
                    ("endTimeUnixNano", sc.endTime.map { "\($0)" } ?? "null"), ("bytesToServer", "\(sc.bytesToServer)"),
                    ("bytesToClient", "\(sc.bytesToClient)"), ("cut", "\(sc.cut)"),
                ]))
        }
        for notice in session.notices {
            write(
                JSONText.object([
                    ("type", JSONText.string("notice")), ("timeUnixNano", "\(notice.time)"),
                    ("kind", "\(notice.kind.rawValue)"), ("text", JSONText.string(notice.text)),
                ]))
        }
    }

    /// `{"name": "value", ...}`; a name seen twice gets an array; withheld values are `"[redacted]"`.
    static func headers(_ fields: [RecordedHeader]) -> String {
        var order: [String] = []
        var values: [String: [String]] = [:]
        for field in fields {
            if values[field.name] == nil { order.append(field.name) }
            values[field.name, default: []].append(field.redacted ? "[redacted]" : field.text)
        }
        return JSONText.object(
            order.map { name in
                let v = values[name]!
                return (name, v.count == 1 ? JSONText.string(v[0]) : JSONText.array(v.map(JSONText.string)))
            })
    }

    /// How a call ended, in words.
    public static func endName(_ end: GRPCCallRecord.End?) -> String {
        switch end {
        case .trailers?: "trailers"
        case .trailersOnly?: "trailersOnly"
        case .reset(let by, let code)?: "reset(\(code)) by \(by == .clientToServer ? "client" : "server")"
        case .refusedByGoAway(let code)?: "refusedByGoAway(\(code))"
        case .connectionLost?: "connectionLost"
        case .decodingStopped(let why)?: "decodingStopped: \(why)"
        case nil: "unfinished"
        }
    }

    static func percentile(_ sorted: [UInt64], _ p: Double) -> UInt64? {
        guard !sorted.isEmpty else { return nil }
        return sorted[min(sorted.count - 1, Int(Double(sorted.count - 1) * p + 0.5))]
    }

    /// Nanoseconds as milliseconds with 3 decimals, `-` for none.
    public static func millis(_ nanos: UInt64?) -> String {
        guard let nanos else { return "-" }
        let micros = nanos / 1000
        let frac = micros % 1000
        return "\(micros / 1000)." + String(repeating: "0", count: 3 - "\(frac)".count) + "\(frac)"
    }

    static func pad(_ s: String, _ n: Int) -> String {
        s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count)
    }
    static func lpad(_ s: String, _ n: Int) -> String {
        s.count >= n ? " " + s : String(repeating: " ", count: n - s.count) + s
    }
}

extension String {
    /// Two lower-case hex digits.
    init(format2 byte: UInt8) {
        let hex = String(byte, radix: 16)
        self = hex.count == 1 ? "0" + hex : hex
    }
}
