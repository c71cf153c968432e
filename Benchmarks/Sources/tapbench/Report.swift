import Foundation

/// Formats the results as Markdown tables with ratios to the direct path, and checks the issue's targets.
struct Report {
    let options: BenchOptions
    let paths: [BenchPath]
    let recordingAvailable: Bool
    let recordingOutcome: [String]
    let loadBefore: String
    let loadAfter: String

    func direct(_ transport: String) -> BenchPath? {
        paths.first { $0.transport == transport && $0.name == "direct" }
    }

    func path(_ name: String, _ transport: String) -> BenchPath? {
        paths.first { $0.transport == transport && $0.name == name }
    }

    static func us(_ nanos: UInt64) -> String { String(format: "%.1f", Double(nanos) / 1000) }
    static func signedUs(_ nanos: Int64) -> String { String(format: "%+.1f", Double(nanos) / 1000) }
    static func ratio(_ value: Double, _ base: Double) -> String {
        base > 0 ? String(format: "%.2f", value / base) : "–"
    }
    static func kib(_ bytes: Int) -> String { "\(bytes >> 10)" }
    static func mib(_ bytes: Int) -> String { String(format: "%.1f", Double(bytes) / 1_048_576) }

    static func machine() -> String {
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let model = cpuinfo.split(separator: "\n").first { $0.hasPrefix("model name") }
            .map { $0.split(separator: ":", maxSplits: 1).last!.trimmingCharacters(in: .whitespaces) } ?? "?"
        let kernel = (try? String(contentsOfFile: "/proc/sys/kernel/osrelease", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
        return "\(model), \(ProcessInfo.processInfo.activeProcessorCount) cores, Linux \(kernel)"
    }

    func median(_ values: [Double]) -> Double {
        guard !values.isEmpty else { return 0 }
        let sorted = values.sorted()
        return sorted[sorted.count / 2]
    }

    func markdown() -> String {
        var out: [String] = []
        let date = ISO8601DateFormatter().string(from: Date())
        out.append("### Run `\(options.label)` — \(date)")
        out.append("")
        out.append("- Machine: \(Self.machine()); load average before \(loadBefore), after \(loadAfter)")
        out.append("- Command: `\(options.command)`")
        out.append("- Paths run interleaved in one run; the tap is a release build with the span log written to a file."
            + " Recording: \(recordingAvailable ? "on for the tap+record rows" : "not available (no `--record` in this build)").")
        for line in recordingOutcome { out.append("- Recording outcome, \(line).") }
        out.append("- `haproxy` is the pure byte relay (HAProxy `mode tcp`): the floor for any user-space proxy here.")
        out.append("")

        out.append("#### Sequential small unary calls (\(options.calls) per path, \(options.unaryPayload)-byte messages, alternating path by path)")
        out.append("")
        out.append("| transport | path | p50 µs | p90 µs | p99 µs | p99.9 µs | added p50 | added p99 | p50 ratio |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for p in paths {
            let base = direct(p.transport)?.latency ?? []
            let p50 = percentile(p.latency, 50), p99 = percentile(p.latency, 99)
            let b50 = percentile(base, 50), b99 = percentile(base, 99)
            out.append("| \(p.transport) | \(p.name) | \(Self.us(p50)) | \(Self.us(percentile(p.latency, 90))) | \(Self.us(p99)) | \(Self.us(percentile(p.latency, 99.9))) | \(Self.signedUs(Int64(p50) - Int64(b50))) | \(Self.signedUs(Int64(p99) - Int64(b99))) | \(Self.ratio(Double(p50), Double(b50))) |")
        }
        out.append("")

        out.append("#### Concurrent unary calls (calls/s; \(options.rounds * 2) alternating windows of \(options.windowSeconds / 2) s per path)")
        out.append("")
        out.append("| transport | path | 1 stream, 1 conn | ratio | 16 streams, 4 conns | ratio | 64 streams, 8 conns | ratio | proxy CPU µs/call at 1 / 16 / 64 |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for p in paths {
            let base = direct(p.transport)
            var row = "| \(p.transport) | \(p.name) |"
            for level in Bench.levels {
                let value = p.rates[level.streams] ?? 0
                row += String(format: " %.0f | %@ |", value, Self.ratio(value, base?.rates[level.streams] ?? 0))
            }
            let cpu = Bench.levels.map { level in p.cpuPerCall[level.streams].map { String(format: "%.1f", $0) } ?? "–" }
            row += " \(p.child == nil ? "–" : cpu.joined(separator: " / ")) |"
            out.append(row)
        }
        out.append("")
        out.append("CPU µs/call: the proxy process's user + system CPU during the windows divided by the calls completed (/proc, 10 ms ticks).")
        out.append("")

        if paths.contains(where: { $0.h2loadRate != nil }) {
            out.append("#### h2load unary calls over TCP (\(options.h2loadRequests) calls × 2 alternating runs per path; 8 connections × 8 streams, nghttp2's C client)")
            out.append("")
            out.append("| transport | path | calls/s | ratio | proxy CPU µs/call | of which event loops / other threads |")
            out.append("|---|---|---:|---:|---:|---:|")
            for p in paths {
                guard let rate = p.h2loadRate else { continue }
                let base = direct(p.transport)?.h2loadRate ?? 0
                let split = p.h2loadCPU.flatMap { total in
                    p.h2loadEventLoopCPU.map { String(format: "%.1f / %.1f", $0, total - $0) }
                } ?? "–"
                out.append("| \(p.transport) | \(p.name) | \(String(format: "%.0f", rate)) | \(Self.ratio(rate, base)) | \(p.h2loadCPU.map { String(format: "%.1f", $0) } ?? "–") | \(split) |")
            }
            out.append("")
        }

        out.append("#### \(options.streamMiB) MiB streams (\(options.streamMessage >> 10) KiB messages) and the proxy's resources")
        out.append("")
        out.append("| transport | path | server stream MiB/s | ratio | client stream MiB/s | ratio | proxy CPU s/GiB | RSS at start MiB | RSS 25 % / end of server stream MiB | peak RSS in streams MiB |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for p in paths {
            let base = direct(p.transport)
            let cpu = p.cpuPerGiB.map { String(format: "%.2f", $0) } ?? "–"
            let proxy = p.child != nil
            out.append("| \(p.transport) | \(p.name) | \(String(format: "%.0f", p.download)) | \(Self.ratio(p.download, base?.download ?? 0)) | \(String(format: "%.0f", p.upload)) | \(Self.ratio(p.upload, base?.upload ?? 0)) | \(cpu) | \(proxy ? Self.mib(p.rssStart) : "–") | \(proxy ? "\(Self.mib(p.rssAtQuarter)) / \(Self.mib(p.rssAtEnd))" : "–") | \(proxy ? Self.mib(p.peakRSS) : "–") |")
        }
        out.append("")

        out.append("#### Clone-like mix (\(options.mixSmallCount) × \(options.mixSmallSize) B messages then one \(options.mixTail >> 20) MiB message; median of \(options.mixRounds))")
        out.append("")
        out.append("| transport | path | ms | ratio (time, lower is better) |")
        out.append("|---|---|---:|---:|")
        for p in paths {
            let base = median(direct(p.transport)?.mixMillis ?? [])
            let value = median(p.mixMillis)
            out.append("| \(p.transport) | \(p.name) | \(String(format: "%.1f", value)) | \(Self.ratio(value, base)) |")
        }
        out.append("")

        out.append("#### Idle connections (\(options.idleConnections) HTTP/2 connections that sent the preface and SETTINGS)")
        out.append("")
        out.append("| transport | proxy | RSS idle MiB | RSS with \(options.idleConnections) idle MiB | KiB per idle connection |")
        out.append("|---|---|---:|---:|---:|")
        for p in paths where p.child != nil {
            let per = Double(p.rssWithIdle - p.rssIdle) / 1024 / Double(options.idleConnections)
            out.append("| \(p.transport) | \(p.name) | \(Self.mib(p.rssIdle)) | \(Self.mib(p.rssWithIdle)) | \(String(format: "%.1f", per)) |")
        }
        out.append("")
        out.append(contentsOf: targets())
        return out.joined(separator: "\n")
    }

    func targets() -> [String] {
        var out = ["#### Targets (issue #7)", ""]
        func line(_ met: Bool?, _ text: String) {
            out.append("- \(met == nil ? "n/a" : met! ? "MET" : "NOT MET"): \(text)")
        }
        guard let d = direct("unix"), let t = path("tap", "unix") else { return out + ["- (tap on unix not run)"] }
        let add50 = Int64(percentile(t.latency, 50)) - Int64(percentile(d.latency, 50))
        let add99 = Int64(percentile(t.latency, 99)) - Int64(percentile(d.latency, 99))
        line(add50 <= 25_000, "added p50 latency on unix ≤ 25 µs: \(Self.signedUs(add50)) µs")
        line(add99 <= 100_000, "added p99 latency on unix ≤ 100 µs: \(Self.signedUs(add99)) µs")
        for transport in ["unix", "tcp"] {
            guard let d = direct(transport), let t = path("tap", transport) else { continue }
            let r64 = (t.rates[64] ?? 0) / max(1, d.rates[64] ?? 0)
            line(r64 >= 0.9, String(format: "%@: unary calls/s at 64 streams ≥ 90 %% of direct: %.0f %%", transport, r64 * 100))
            if let rate = t.h2loadRate, let base = d.h2loadRate {
                line(rate / base >= 0.9, String(format: "%@: h2load unary calls/s at 64 streams ≥ 90 %% of direct: %.0f %%", transport, rate / base * 100))
            }
            let down = t.download / max(1, d.download), up = t.upload / max(1, d.upload)
            line(down >= 0.9, String(format: "%@: server stream ≥ 90 %% of direct: %.0f %%", transport, down * 100))
            line(up >= 0.9, String(format: "%@: client stream ≥ 90 %% of direct: %.0f %%", transport, up * 100))
            if let n = path("nghttpx", transport) {
                let tl50 = percentile(t.latency, 50), nl50 = percentile(n.latency, 50)
                let tl99 = percentile(t.latency, 99), nl99 = percentile(n.latency, 99)
                let better = tl50 < nl50 && tl99 < nl99 && (t.rates[64] ?? 0) > (n.rates[64] ?? 0)
                    && (t.h2loadRate ?? 0) >= (n.h2loadRate ?? 0)
                    && t.download > n.download && t.upload > n.upload
                var text = String(format: "%@: better than nghttpx on each: p50 %@ vs %@ µs, p99 %@ vs %@ µs, 64 streams %.0f vs %.0f calls/s, server stream %.0f vs %.0f MiB/s, client stream %.0f vs %.0f MiB/s",
                                  transport, Self.us(tl50), Self.us(nl50), Self.us(tl99), Self.us(nl99),
                                  t.rates[64] ?? 0, n.rates[64] ?? 0, t.download, n.download, t.upload, n.upload)
                if let a = t.h2loadRate, let b = n.h2loadRate { text += String(format: ", h2load %.0f vs %.0f calls/s", a, b) }
                line(better, text)
            }
            if let r = path("tap+record", transport) {
                let down = r.download / max(1, d.download), up = r.upload / max(1, d.upload)
                line(down >= 0.85 && up >= 0.85, String(format: "%@: recording on ≥ 85 %% of direct: server stream %.0f %%, client stream %.0f %%", transport, down * 100, up * 100))
            } else {
                line(nil, "\(transport): recording on ≥ 85 % of direct: not available (no --record in this build)")
            }
        }
        let per = Double(t.rssWithIdle - t.rssIdle) / 1024 / Double(options.idleConnections)
        line(per <= 64, String(format: "RSS per idle connection ≤ 64 KiB: %.1f KiB (unix)", per))
        let bounded = t.peakRSS <= t.rssStart + (64 << 20)
        line(bounded, "RSS bounded under the \(options.streamMiB) MiB stream: peak \(Self.mib(t.peakRSS)) MiB, start \(Self.mib(t.rssStart)) MiB, 25 % \(Self.mib(t.rssAtQuarter)) MiB, end \(Self.mib(t.rssAtEnd)) MiB")
        if let h = path("haproxy", "unix") {
            out.append(String(format: "- floor (HAProxy tcp relay, unix): added p50 %@ µs, p99 %@ µs; server stream %.0f %%, client stream %.0f %% of direct",
                              Self.signedUs(Int64(percentile(h.latency, 50)) - Int64(percentile(d.latency, 50))),
                              Self.signedUs(Int64(percentile(h.latency, 99)) - Int64(percentile(d.latency, 99))),
                              h.download / max(1, d.download) * 100, h.upload / max(1, d.upload) * 100))
        }
        return out
    }

    /// Replaces (or appends) the section for `label` in `file`, between HTML comment markers.
    static func store(_ report: String, label: String, in file: String) throws {
        let begin = "<!-- run:\(label) -->", end = "<!-- /run:\(label) -->"
        var text = (try? String(contentsOfFile: file, encoding: .utf8)) ?? "# Benchmarks\n\n"
        let block = "\(begin)\n\(report)\n\(end)"
        if let start = text.range(of: begin), let stop = text.range(of: end, range: start.upperBound..<text.endIndex) {
            text.replaceSubrange(start.lowerBound..<stop.upperBound, with: block)
        } else {
            if !text.hasSuffix("\n\n") { text += "\n" }
            text += block + "\n"
        }
        try text.write(toFile: file, atomically: true, encoding: .utf8)
    }
}
