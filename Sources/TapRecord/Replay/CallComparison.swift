/// What a replayed call got back, reduced to what is compared with the recording.
public struct ReplayAnswer: Sendable {
    /// `grpc-status` of the trailers; nil when the call ended without one.
    public var status: Int?
    public var statusMessage: String
    /// Response message payloads, in order.
    public var messages: [[UInt8]]
    /// How the call ended when not with a status (reset code, connection error).
    public var failure: String?
    /// Replay reset the call itself, as the recorded client had.
    public var resetByReplay: Bool
    /// Nanoseconds from sending the headers to the end.
    public var duration: UInt64

    public init(
        status: Int?, statusMessage: String, messages: [[UInt8]], failure: String? = nil, resetByReplay: Bool = false,
        duration: UInt64
    ) {
        self.status = status
        self.statusMessage = statusMessage
        self.messages = messages
        self.failure = failure
        self.resetByReplay = resetByReplay
        self.duration = duration
    }
}

/// Compares a replayed answer with the recorded one: status, message count, message bytes.
public enum CallComparison {
    /// The differences, each one line; empty when the answer matches.
    ///
    /// A recorded message cut at the cap is compared on its stored bytes and its length. A differing message is
    /// described by its first differing byte and, when both sides parse as protobuf, the field path there.
    public static func differences(recorded call: RecordedCall, replayed answer: ReplayAnswer) -> [String] {
        var out: [String] = []
        if case .reset(let by, let code)? = call.end, by == .clientToServer {
            // The recorded client gave up (cancelled, or its deadline passed). Replay resets at the same point; a
            // server that ends the call first with DEADLINE_EXCEEDED for the recorded grpc-timeout agrees too.
            let deadlinePassed = answer.status == 4 && call.requestHeader("grpc-timeout") != nil
            if !answer.resetByReplay, !deadlinePassed {
                let now = answer.failure ?? answer.status.map(GRPCStatusName.name) ?? "no status"
                out.append(
                    "end: the recorded client reset the call (code \(code)) after \(call.responses.count) message(s); "
                        + "replayed, it ended first: \(now)")
            }
        } else if answer.resetByReplay {
            out.append("end: replay reset the call, recorded \(call.statusName)")
        } else if let failure = answer.failure {
            out.append("no status: \(failure) (recorded \(call.statusName))")
        } else if answer.status != call.statusCode {
            let now = answer.status.map(GRPCStatusName.name) ?? "none"
            out.append(
                "status: recorded \(call.statusName), replayed \(now)\(answer.statusMessage.isEmpty ? "" : " (\(answer.statusMessage))")"
            )
        } else if answer.statusMessage != call.statusMessage {
            out.append("status message: recorded \(quote(call.statusMessage)), replayed \(quote(answer.statusMessage))")
        }
        if answer.messages.count != call.responses.count {
            out.append("response messages: recorded \(call.responses.count), replayed \(answer.messages.count)")
        }
        for i in 0..<min(answer.messages.count, call.responses.count) {
            let recorded = call.responses[i]
            let now = answer.messages[i]
            let stored = recorded.bytes
            if recorded.length != now.count {
                out.append(
                    "response message \(i): recorded \(recorded.length) bytes, replayed \(now.count) bytes"
                        + firstDifference(stored, now, recordedTruncated: recorded.truncated))
            } else if stored != Array(now.prefix(stored.count)) {
                out.append(
                    "response message \(i): same length (\(now.count) bytes), content differs"
                        + firstDifference(stored, now, recordedTruncated: recorded.truncated))
            }
        }
        return out
    }

    private static func firstDifference(_ a: [UInt8], _ b: [UInt8], recordedTruncated: Bool) -> String {
        let common = min(a.count, b.count)
        var at = 0
        while at < common, a[at] == b[at] { at += 1 }
        if at == common {
            if recordedTruncated, a.count < b.count { return "; the stored first \(a.count) bytes match" }
            return "; one is a prefix of the other"
        }
        var text = "; first difference at byte \(at)"
        if !recordedTruncated, let path = ProtobufDiff.firstDifference(a, b) {
            text += " (\(path))"
        }
        return text
    }

    private static func quote(_ s: String) -> String { "\"\(s)\"" }
}

/// Finds where two protobuf messages first differ, as a field path, without their schema.
enum ProtobufDiff {
    private struct Field {
        var number: UInt64
        var wireType: UInt8
        var value: ArraySlice<UInt8>
        var varint: UInt64 = 0
    }

    private static func parse(_ bytes: ArraySlice<UInt8>) -> [Field]? {
        var fields: [Field] = []
        var i = bytes.startIndex
        func varint() -> UInt64? {
            var result: UInt64 = 0
            var shift: UInt64 = 0
            while i < bytes.endIndex, shift < 64 {
                let b = bytes[i]
                i += 1
                result |= UInt64(b & 0x7F) << shift
                if b & 0x80 == 0 { return result }
                shift += 7
            }
            return nil
        }
        while i < bytes.endIndex {
            guard let key = varint(), key >> 3 > 0 else { return nil }
            let wire = UInt8(key & 7)
            let start = i
            switch wire {
            case 0:
                guard let v = varint() else { return nil }
                fields.append(Field(number: key >> 3, wireType: 0, value: bytes[start..<i], varint: v))
            case 1, 5:
                let n = wire == 1 ? 8 : 4
                guard bytes.endIndex - i >= n else { return nil }
                i += n
                fields.append(Field(number: key >> 3, wireType: wire, value: bytes[start..<i]))
            case 2:
                guard let n = varint(), n <= UInt64(bytes.endIndex - i) else { return nil }
                let s = i
                i += Int(n)
                fields.append(Field(number: key >> 3, wireType: 2, value: bytes[s..<i]))
            default: return nil
            }
        }
        return fields
    }

    /// `field 1[0] > field 2: "abc" vs "abd"`, or nil when either side is not protobuf.
    static func firstDifference(_ a: [UInt8], _ b: [UInt8]) -> String? {
        describe(a[...], b[...], depth: 0)
    }

    private static func describe(_ a: ArraySlice<UInt8>, _ b: ArraySlice<UInt8>, depth: Int) -> String? {
        guard depth < 8, let fa = parse(a), let fb = parse(b) else { return nil }
        var occurrence: [UInt64: Int] = [:]
        for i in 0..<max(fa.count, fb.count) {
            guard i < fa.count, i < fb.count else {
                let extra = i < fa.count ? fa[i] : fb[i]
                return "field \(extra.number) only in the \(i < fa.count ? "recorded" : "replayed") answer"
            }
            let x = fa[i], y = fb[i]
            let n = occurrence[x.number, default: 0]
            occurrence[x.number] = n + 1
            if x.number != y.number { return "field \(x.number) recorded where field \(y.number) replayed" }
            guard x.value != y.value || x.wireType != y.wireType else { continue }
            let name = "field \(x.number)[\(n)]"
            if x.wireType == 2, y.wireType == 2, let inner = describe(x.value, y.value, depth: depth + 1) {
                return name + " > " + inner
            }
            return name + ": " + show(x) + " vs " + show(y)
        }
        return nil
    }

    private static func show(_ f: Field) -> String {
        switch f.wireType {
        case 0: return "\(f.varint)"
        case 2:
            let bytes = Array(f.value)
            if bytes.count <= 64, let text = String(validating: bytes, as: UTF8.self),
                text.unicodeScalars.allSatisfy({ $0.value >= 0x20 && $0.value != 0x7F })
            {
                return "\"\(text)\""
            }
            return "\(bytes.count) bytes"
        default: return f.value.map { String(format2: $0) }.joined()
        }
    }
}
