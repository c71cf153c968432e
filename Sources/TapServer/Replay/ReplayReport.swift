import TapRecord

/// The text `gitaly-tap replay` prints: every call that did not match with its differences, counts, and a latency
/// comparison (overall and per method).
public enum ReplayReport {
    /// True when every recorded call was sent and answered as recorded.
    public static func allMatched(_ outcomes: [ReplayOutcome]) -> Bool {
        !outcomes.isEmpty && outcomes.allSatisfy(\.matched)
    }

    public static func text(_ outcomes: [ReplayOutcome], file: String, target: String, rate: Double?, concurrency: Int)
        -> String
    {
        var out: [String] = []
        let pace = rate.map { $0 == 1 ? "recorded pace" : "recorded pace ×\($0)" } ?? "as fast as possible"
        out.append("replay of \(file) against \(target) (\(pace), concurrency \(concurrency))")
        let sent = outcomes.filter { $0.skipped == nil }
        let matched = outcomes.filter(\.matched)
        let differ = sent.filter { !$0.differences.isEmpty }
        let skipped = outcomes.filter { $0.skipped != nil }
        out.append(
            "calls: \(outcomes.count) recorded, \(sent.count) sent, \(matched.count) matched, \(differ.count) differ, "
                + "\(skipped.count) skipped")
        for o in outcomes where !o.matched {
            if let reason = o.skipped {
                out.append("SKIPPED #\(o.call.id) \(o.call.path): \(reason)")
                continue
            }
            out.append("DIFFERS #\(o.call.id) \(o.call.path):")
            for d in o.differences { out.append("    \(d)") }
        }
        let pairs = sent.compactMap { o -> (String, UInt64, UInt64)? in
            guard let recorded = o.call.duration, let replayed = o.answer?.duration else { return nil }
            return (o.call.path, recorded, replayed)
        }
        if !pairs.isEmpty {
            out.append("")
            out.append(
                "latency (ms)" + String(repeating: " ", count: 36)
                    + "calls  recorded p50  replayed p50  recorded max  replayed max")
            out.append(line("all calls", pairs))
            var order: [String] = []
            var groups: [String: [(String, UInt64, UInt64)]] = [:]
            for p in pairs {
                if groups[p.0] == nil { order.append(p.0) }
                groups[p.0, default: []].append(p)
            }
            for method in order { out.append(line(method, groups[method]!)) }
        }
        out.append("")
        out.append(
            allMatched(outcomes)
                ? "result: all \(outcomes.count) calls matched"
                : "result: \(outcomes.count - matched.count) of \(outcomes.count) calls did not match")
        return out.joined(separator: "\n") + "\n"
    }

    private static func line(_ name: String, _ pairs: [(String, UInt64, UInt64)]) -> String {
        let recorded = pairs.map(\.1).sorted()
        let replayed = pairs.map(\.2).sorted()
        func p50(_ v: [UInt64]) -> UInt64 { v[(v.count - 1) / 2] }
        let padded = name.count >= 48 ? name + " " : name + String(repeating: " ", count: 48 - name.count)
        return padded + lpad("\(pairs.count)", 5) + lpad(SessionReport.millis(p50(recorded)), 14)
            + lpad(SessionReport.millis(p50(replayed)), 14) + lpad(SessionReport.millis(recorded.last), 14)
            + lpad(SessionReport.millis(replayed.last), 14)
    }

    private static func lpad(_ s: String, _ n: Int) -> String {
        s.count >= n ? " " + s : String(repeating: " ", count: n - s.count) + s
    }
}
