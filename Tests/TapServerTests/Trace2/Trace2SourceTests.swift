import Foundation
import TapServer
import TapTrace
import Testing

/// Real git processes writing Trace2 to the tap's sources: sockets, watched directories, Gitaly-style temp files.
@Suite("Trace2 sources", .serialized)
struct Trace2SourceTests {
    /// Accepted connections and listeners bound to `path` (a unix socket shows its path on both).
    static func unixSockets(at path: String) -> Int {
        // procfs files report size 0: read until end of file rather than trusting the size.
        let table =
            (FileHandle(forReadingAtPath: "/proc/net/unix").flatMap { try? $0.readToEnd() })
            .map { String(decoding: $0, as: UTF8.self) } ?? ""
        return table.split(separator: "\n").filter { $0.hasSuffix(" " + path) }.count
    }

    /// This process's descriptors that point into `directory`.
    static func descriptors(into directory: String) -> Int {
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        return fds.filter { fd in
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(fd)"))?.hasPrefix(
                directory + "/")
                == true
        }.count
    }

    static let burst = 1000

    /// Trace2 options watching a new directory `name` in `dir`, and that directory's path.
    static func watching(_ dir: TempDir, _ name: String) throws -> (Trace2Options, String) {
        let path = dir.file(name)
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
        var options = Trace2Options()
        options.directories = [path]
        return (options, path)
    }

    @Test("1000 short git processes on the stream socket: every process arrives, no connection is left open")
    func socketBurst() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let socket = dir.file("t2.sock")
        var options = Trace2Options()
        options.sockets = [Trace2SocketTarget(kind: .stream, path: socket)]
        let before = openDescriptorCount()
        let clock = ContinuousClock()
        let started = clock.now
        let sink = try await Trace2Harness.with(trace2: options) { h in
            let result = try await runCommand(
                "/bin/sh", ["-c", "seq \(Self.burst) | xargs -P 8 -I{} git version > /dev/null"],
                environment: ["GIT_TRACE2_EVENT": "af_unix:stream:\(socket)"])
            print("trace2 socket burst: git processes done after \(clock.now - started)")
            #expect(result.status == 0, "\(result.stderr)")
            try await h.wait("\(Self.burst) processes") {
                h.collector.counts.processesFinished >= Self.burst ? true : nil
            }
            try await h.wait("connections closed") { h.runtime.listeners[0].openConnections == 0 ? true : nil }
            #expect(Self.unixSockets(at: socket) == 1)  // the listener alone
            let counts = h.collector.counts
            #expect(counts.processesFinished == Self.burst)
            #expect(counts.incompleteProcesses == 0)
            #expect(counts.malformedLines == 0 && counts.truncatedLines == 0)
            #expect(counts.streamsOpened == Self.burst && counts.streamsClosed == Self.burst)
            print("trace2 socket burst: all processes collected after \(clock.now - started)")
            return h.sink
        }
        let processes = sink.collected.filter { $0.name == "git version" }
        #expect(processes.count == Self.burst)
        #expect(Set(processes.compactMap { $0.string("trace2.sid") }).count == Self.burst)
        #expect(Self.unixSockets(at: socket) == 0)
        #expect(!FileManager.default.fileExists(atPath: socket))
        let after = openDescriptorCount()
        print("trace2 socket burst: \(Self.burst) processes, descriptors before \(before), after \(after)")
    }

    @Test("1000 short git processes into a watched directory target: every file read and closed")
    func directoryBurst() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let (options, target) = try Self.watching(dir, "trace2")
        let before = openDescriptorCount()
        let (sink, watcher) = try await Trace2Harness.with(trace2: options) { h in
            let result = try await runCommand(
                "/bin/sh", ["-c", "seq \(Self.burst) | xargs -P 8 -I{} git version > /dev/null"],
                environment: ["GIT_TRACE2_EVENT": target])
            #expect(result.status == 0, "\(result.stderr)")
            try await h.wait("\(Self.burst) processes") {
                h.collector.counts.processesFinished >= Self.burst ? true : nil
            }
            let watcher = h.runtime.watchers[0]
            try await h.wait("files closed") { watcher.openFiles == 0 ? true : nil }
            #expect(Self.descriptors(into: target) == 0)
            #expect(watcher.counts.filesOpened == Self.burst)
            #expect(watcher.counts.filesMissed == 0)
            #expect(h.collector.counts.incompleteProcesses == 0)
            return (h.sink, watcher)
        }
        #expect(sink.collected.filter { $0.name == "git version" }.count == Self.burst)
        #expect(watcher.isClosed)
        print(
            "trace2 directory burst: \(Self.burst) processes, descriptors before \(before), after \(openDescriptorCount())"
        )
    }

    @Test("Gitaly-style temp files, deleted right after the command: read to the end, descriptors released")
    func gitalyTempFiles() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let (options, tmp) = try Self.watching(dir, "gitaly-tmp")
        let count = Self.burst
        let sink = try await Trace2Harness.with(trace2: options) { h in
            // What Gitaly does per command: create the file, run git with it as the target, delete it.
            let script = """
                seq \(count) | xargs -P 4 -I{} sh -c 'f=$(mktemp "\(tmp)/gitaly-trace2XXXXXX") && \
                GIT_TRACE2_EVENT="$f" GIT_TRACE2_PARENT_SID=corr-{} git rev-parse --git-dir > /dev/null 2>&1; rm -f "$f"'
                """
            let result = try await runCommand("/bin/sh", ["-c", script])
            #expect(result.status == 0, "\(result.stderr)")
            let watcher = h.runtime.watchers[0]
            try await h.wait("all files finished") {
                let c = watcher.counts
                return c.filesOpened + c.filesMissed == count && watcher.openFiles == 0 ? true : nil
            }
            #expect(Self.descriptors(into: tmp) == 0)
            let counts = watcher.counts
            #expect(h.collector.counts.processesFinished == counts.filesOpened)
            #expect(h.collector.counts.incompleteProcesses == 0)
            let metrics = TapMetrics()
            h.runtime.registerMetrics(metrics)
            let text = metrics.render()
            #expect(text.contains("gitaly_tap_trace2_files_total{result=\"read\"} \(counts.filesOpened)\n"))
            #expect(text.contains("gitaly_tap_trace2_files_total{result=\"missed\"} \(counts.filesMissed)\n"))
            print(
                "trace2 temp files: \(count) created and deleted, \(counts.filesOpened) read, \(counts.filesMissed) missed"
            )
            return h.sink
        }
        let spans = sink.collected.filter { $0.name == "git rev-parse" }
        #expect(spans.allSatisfy { $0.string("trace2.sid")?.hasPrefix("corr-") == true })
        #expect(spans.count == sink.collected.filter { $0.name.hasPrefix("git ") }.count)
    }

    @Test("a writer that disconnects mid-event: the cut line is counted, the process ends as incomplete")
    func writerDisconnectsMidEvent() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let socket = dir.file("t2.sock")
        var options = Trace2Options()
        options.sockets = [Trace2SocketTarget(kind: .stream, path: socket)]
        let sid = "20260101T000000.000000Z-H00000000-P00001234"
        let sink = try await Trace2Harness.with(trace2: options) { h in
            let lines = [
                #"{"event":"version","sid":"\#(sid)","thread":"main","time":"2026-01-01T00:00:00.000100Z","evt":"3","exe":"2.39.5"}"#,
                #"{"event":"start","sid":"\#(sid)","thread":"main","time":"2026-01-01T00:00:00.000200Z","t_abs":0.0002,"argv":["git","status"]}"#,
                #"{"event":"region_enter","sid":"\#(sid)","thread":"main","time":"2026-01-01T00:00:00.000300Z","nesting":1,"category":"status","label":"worktrees"}"#,
            ]
            let writer = try RawSocket(connectingTo: "unix:" + socket)
            let bytes = Array((lines.joined(separator: "\n") + "\n").utf8)
            // Split anywhere: the events must come out whole.
            for chunk in stride(from: 0, to: bytes.count, by: 37) {
                try writer.write(Array(bytes[chunk..<min(bytes.count, chunk + 37)]))
            }
            try writer.write(Array(#"{"event":"region_leave","sid":"\#(sid)","thread":"ma"#.utf8))
            writer.shutdownWrite()
            try await h.wait("the connection's end") { h.collector.counts.streamsClosed == 1 ? true : nil }
            let counts = h.collector.counts
            #expect(counts.events == 3)
            #expect(counts.truncatedLines == 1)
            #expect(counts.processesFinished == 1 && counts.incompleteProcesses == 1)
            let metrics = TapMetrics()
            h.runtime.registerMetrics(metrics)
            let text = metrics.render()
            #expect(text.contains("gitaly_tap_trace2_events_total 3\n"))
            #expect(text.contains("gitaly_tap_trace2_malformed_lines_total{reason=\"truncated\"} 1\n"))
            #expect(text.contains("gitaly_tap_trace2_streams_open 0\n"))
            return h.sink
        }
        let span = try #require(sink.collected.first { $0.name == "git status" })
        #expect(span.string("trace2.ending") == "incomplete: connection closed")
        let region = try #require(sink.collected.first { $0.name == "status:worktrees" })
        #expect(region.parentSpanID == span.spanID)
        #expect(region.attributes["trace2.region.unclosed"] == .bool(true))
    }

    /// The first two events of a `git status` process (no `exit`): what a git that hangs or was killed without a
    /// signal event leaves behind.
    static func startedProcessLines(sid: String) -> String {
        [
            #"{"event":"version","sid":"\#(sid)","thread":"main","time":"2026-01-01T00:00:00.000100Z","evt":"3","exe":"2.39.5"}"#,
            #"{"event":"start","sid":"\#(sid)","thread":"main","time":"2026-01-01T00:00:00.000200Z","t_abs":0.0002,"argv":["git","status"]}"#,
        ].joined(separator: "\n") + "\n"
    }

    @Test("a process that goes silent on an open connection is finished as incomplete after the idle timeout")
    func silentProcessExpires() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let socket = dir.file("t2.sock")
        var options = Trace2Options()
        options.sockets = [Trace2SocketTarget(kind: .stream, path: socket)]
        options.collector.processIdleTimeout = .seconds(2)  // 600 s in production
        let sid = "20260101T000000.000000Z-H00000000-P00004321"
        let sink = try await Trace2Harness.with(trace2: options) { h in
            let writer = try RawSocket(connectingTo: "unix:" + socket)
            let written = ContinuousClock.now
            try writer.write(Array(Self.startedProcessLines(sid: sid).utf8))
            try await h.wait("the silent process expired") {
                h.collector.counts.processesFinished == 1 ? true : nil
            }
            // Not before the timeout (its last event arrived after the write), however busy the machine.
            #expect(ContinuousClock.now - written >= .seconds(2))
            #expect(h.collector.counts.events == 2)
            let counts = h.collector.counts
            #expect(counts.incompleteProcesses == 1)
            #expect(counts.streamsClosed == 0, "the connection is still open: the timeout, not its end, finished it")
            writer.shutdownWrite()
            try await h.wait("the connection's end") { h.collector.counts.streamsClosed == 1 ? true : nil }
            #expect(h.collector.counts.processesFinished == 1, "finished once")
            return h.sink
        }
        let spans = sink.collected.filter { $0.name == "git status" }
        #expect(spans.count == 1)
        #expect(spans.first?.string("trace2.ending") == "incomplete: no events for too long")
    }

    @Test("an event file that stops growing without being deleted is finished at the idle timeout; its descriptor is closed")
    func idleFileFinished() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        var (options, tmp) = try Self.watching(dir, "gitaly-tmp")
        options.fileIdleTimeout = .seconds(1)  // 600 s in production
        let sid = "20260101T000000.000000Z-H00000000-P00005678"
        let sink = try await Trace2Harness.with(trace2: options) { h in
            let file = tmp + "/gitaly-trace2idle01"
            try Self.startedProcessLines(sid: sid).write(toFile: file, atomically: false, encoding: .utf8)
            let watcher = h.runtime.watchers[0]
            try await h.wait("the file opened") { watcher.counts.filesOpened == 1 ? true : nil }
            try await h.wait("the idle file finished") { watcher.openFiles == 0 ? true : nil }
            #expect(Self.descriptors(into: tmp) == 0, "descriptor closed")
            #expect(FileManager.default.fileExists(atPath: file), "the file itself is left alone")
            let counts = h.collector.counts
            #expect(counts.events == 2)
            #expect(counts.streamsClosed == 1)
            #expect(counts.processesFinished == 1 && counts.incompleteProcesses == 1)
            return h.sink
        }
        let span = try #require(sink.collected.first { $0.name == "git status" })
        #expect(span.string("trace2.ending") == "incomplete: file idle too long")
    }

    @Test("datagram socket: every event of every process arrives")
    func datagrams() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let socket = dir.file("t2.dgram")
        var options = Trace2Options()
        options.sockets = [Trace2SocketTarget(kind: .dgram, path: socket)]
        let count = 100
        let sink = try await Trace2Harness.with(trace2: options) { h in
            let result = try await runCommand(
                "/bin/sh", ["-c", "seq \(count) | xargs -P 4 -I{} git version > /dev/null"],
                environment: ["GIT_TRACE2_EVENT": "af_unix:dgram:\(socket)"])
            #expect(result.status == 0, "\(result.stderr)")
            try await h.wait("\(count) processes") { h.collector.counts.processesFinished >= count ? true : nil }
            #expect(h.collector.counts.malformedLines == 0)
            return h.sink
        }
        #expect(sink.collected.filter { $0.name == "git version" }.count == count)
        #expect(!FileManager.default.fileExists(atPath: socket))
    }
}

extension Span {
    func string(_ key: String) -> String? {
        if case .string(let value) = attributes[key] { return value }
        return nil
    }
}
