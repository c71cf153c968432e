import Foundation
import Logging
import NIOCore
import NIOPosix
import TapServer
import TapTrace
import Testing

/// An in-process tap with Trace2 sources, an in-memory span sink and (optionally) a proxy in front of an upstream.
struct Trace2Harness: Sendable {
    let sink: CollectingSpanSink
    let pipeline: SpanPipeline
    let collector: Trace2Collector
    let runtime: Trace2Runtime
    let proxy: TapProxy?

    static func with<T: Sendable>(
        trace2: Trace2Options, listen: TapAddress? = nil, upstream: TapAddress? = nil, metrics: TapMetrics? = nil,
        _ body: (Trace2Harness) async throws -> T
    ) async throws -> T {
        var logger = Logger(label: "trace2-test")
        logger.logLevel = .warning
        let sink = CollectingSpanSink()
        let collector = Trace2Collector(configuration: trace2.collector, logger: logger)
        let pipeline = SpanPipeline(sinks: [sink], metrics: metrics, observer: collector, logger: logger)
        let group = MultiThreadedEventLoopGroup.singleton
        let runtime = try await Trace2Runtime.start(trace2, collector: collector, group: group, logger: logger)
        var proxy: TapProxy?
        if let listen, let upstream {
            let p = TapProxy(
                configuration: ProxyConfiguration(listen: listen, upstream: upstream), pipeline: pipeline, group: group,
                logger: logger)
            do {
                try await p.start()
            } catch {
                await runtime.stop()
                throw error
            }
            proxy = p
        }
        let harness = Trace2Harness(
            sink: sink, pipeline: pipeline, collector: collector, runtime: runtime, proxy: proxy)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await pipeline.run(flushInterval: .milliseconds(50)) }
            do {
                let result = try await body(harness)
                await proxy?.stop(drain: .seconds(5))
                await runtime.stop()
                pipeline.finish()
                try await group.waitForAll()
                return result
            } catch {
                await proxy?.stop(drain: .seconds(1))
                await runtime.stop()
                pipeline.finish()
                try await group.waitForAll()
                throw error
            }
        }
    }

    /// Waits until `predicate` holds (or fails after `timeout`, naming what it waited for).
    @discardableResult
    func wait<T>(
        _ what: String, timeout: Duration = .seconds(60), _ predicate: () -> T?
    ) async throws -> T {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let value = predicate() { return value }
            try await Task.sleep(for: .milliseconds(25))
        }
        throw PeerError("timed out waiting for \(what); counts: \(collector.counts); spans: \(sink.collected.count)")
    }

    var spans: [Span] { sink.collected }
}

/// Descriptors open in this process now.
func openDescriptorCount() -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
}

/// The Go peers (Gitaly-like upstream, Workhorse-like client), built by scripts/install-peers.sh.
enum GoPeer {
    static var executable: String { Peers.repo.appendingPathComponent(".peers/bin/gitaly-peer").path }

    static func require() throws {
        guard FileManager.default.isExecutableFile(atPath: executable) else {
            throw PeerError("Go test peers are not installed (\(executable) missing): run scripts/install-peers.sh")
        }
    }
}

/// Bare repositories with a few commits under `<dir>/storage/group/<name>.git`, made with the installed git.
func makeStorage(in dir: TempDir, repositories: [String]) async throws -> String {
    let storage = dir.file("storage")
    let script = """
        set -e
        export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_SYSTEM=/dev/null
        export GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@example.com GIT_COMMITTER_NAME=t GIT_COMMITTER_EMAIL=t@example.com
        for name in \(repositories.joined(separator: " ")); do
            git init -q --bare "\(storage)/group/$name.git"
            src="\(dir.path)/src-$name"
            git init -q "$src"
            for i in 1 2 3 4 5; do head -c 20000 /dev/urandom | base64 > "$src/f$i"; git -C "$src" add .; git -C "$src" commit -q -m "$name $i"; done
            git -C "$src" push -q "\(storage)/group/$name.git" HEAD:refs/heads/main
            git --git-dir="\(storage)/group/$name.git" symbolic-ref HEAD refs/heads/main
        done
        """
    let result = try await runCommand("/bin/sh", ["-c", script])
    guard result.status == 0 else { throw PeerError("making repositories failed: \(result.stderr)") }
    return storage
}

/// A copy of `Config/git-trace2-wrapper.sh` in `dir` with the socket path set in it, installed the way an operator
/// would (docs/trace2.md); returns the wrapper's path.
func installTrace2Wrapper(in dir: TempDir, socket: String) throws -> String {
    let template = try String(
        contentsOfFile: Peers.repo.appendingPathComponent("Config/git-trace2-wrapper.sh").path, encoding: .utf8)
    let wrapper = dir.file("git")
    try template.replacingOccurrences(of: "/var/opt/gitlab/gitaly-tap/trace2.sock", with: socket)
        .write(toFile: wrapper, atomically: true, encoding: .utf8)
    try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: wrapper)
    return wrapper
}
