import Foundation
import Logging
import NIOPosix
import TapTrace

/// What `gitaly-tap demo` runs with.
public struct DemoOptions: Sendable {
    /// The Go peer binary (`gitaly-peer`); nil to look in the usual places (see `DemoRunner.locatePeer`).
    public var peerPath: String?
    /// Keep the scratch directory (repositories, sockets, peer logs) instead of removing it.
    public var keepDirectory = false

    /// Default options.
    public init() {}
}

/// A demo step that failed, said in one line with what to do.
public struct DemoError: Error, CustomStringConvertible {
    public var description: String

    /// An error with its message.
    public init(_ description: String) { self.description = description }
}

/// `gitaly-tap demo`: starts the Gitaly-like Go upstream (real git behind it) and the tap on temp sockets, makes a
/// small repository, clones it through the tap with real git over the SSH-like and HTTP-like paths (both on
/// backchannel connections with sidechannels), and prints what the tap recorded as one tree per trace.
public enum DemoRunner {
    /// Candidate paths of the Go peer: `explicit`, `$GITALY_TAP_GO_PEER`, `.peers/bin/gitaly-peer` under the
    /// working directory, then under the directories above the running executable (a SwiftPM build sits in
    /// `<repo>/.build/<triple>/debug/`).
    public static func peerCandidates(
        explicit: String?, environment: [String: String], workingDirectory: String,
        executable: String
    ) -> [String] {
        if let explicit { return [explicit] }
        var candidates: [String] = []
        if let env = environment["GITALY_TAP_GO_PEER"], !env.isEmpty { candidates.append(env) }
        candidates.append(workingDirectory + "/.peers/bin/gitaly-peer")
        var dir = URL(fileURLWithPath: executable).resolvingSymlinksInPath().deletingLastPathComponent()
        for _ in 0..<5 {
            candidates.append(dir.appendingPathComponent(".peers/bin/gitaly-peer").path)
            dir = dir.deletingLastPathComponent()
        }
        var seen = Set<String>()
        return candidates.filter { seen.insert($0).inserted }
    }

    /// The first executable candidate, or an error telling how to install the peers.
    public static func locatePeer(explicit: String?) throws -> String {
        let executable =
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
            ?? CommandLine.arguments.first ?? ""
        let candidates = peerCandidates(
            explicit: explicit, environment: ProcessInfo.processInfo.environment,
            workingDirectory: FileManager.default.currentDirectoryPath, executable: executable)
        if let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) { return found }
        throw DemoError(
            "the demo's Go peers are not installed (no executable gitaly-peer at \(candidates.joined(separator: ", "))): "
                + "run scripts/install-peers.sh in the gitaly-tap repository, or pass --peer PATH")
    }

    /// Runs the demo, writing progress and the trace trees through `print`; returns the spans the tap recorded.
    @discardableResult
    public static func run(_ options: DemoOptions, print: @Sendable (String) -> Void) async throws -> [Span] {
        let peer = try locatePeer(explicit: options.peerPath)
        let git = try findOnPath("git")
        let scratch = try makeScratchDirectory()
        defer {
            if !options.keepDirectory { try? FileManager.default.removeItem(atPath: scratch) }
        }
        let environment = [
            "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0",
            "TMPDIR": scratch + "/tmp",
        ]
        try FileManager.default.createDirectory(atPath: scratch + "/tmp", withIntermediateDirectories: true)
        print("gitaly-tap demo")
        print(
            "  scratch     \(scratch)" + (options.keepDirectory ? " (kept)" : " (removed at the end; --keep keeps it)"))

        let repository = try await makeRepository(git: git, scratch: scratch, environment: environment)
        print("  repository  group/demo.git: \(repository.commits) commits, tag v1.0")

        let gitalySocket = scratch + "/gitaly.sock"
        let upstream = try BackgroundProcess(
            peer, ["upstream", "--listen", "unix:" + gitalySocket, "--storage", "default=" + scratch + "/storage"],
            environment: environment, logDirectory: scratch, name: "gitaly")
        defer { upstream.stop() }
        _ = try await upstream.waitReady()
        print(
            "  gitaly      unix:\(gitalySocket)  (Go Gitaly-like server: plain HTTP/2 and backchannel, real git, Trace2 files)"
        )

        var logger = Logger(label: "gitaly-tap-demo")
        logger.logLevel = .warning
        let sink = CollectingSpanSink()
        // The upstream writes Gitaly's gitaly-trace2* temp files into its TMPDIR: the tap reads them (docs/trace2.md).
        var trace2Options = Trace2Options()
        trace2Options.directories = [scratch + "/tmp"]
        let collector = Trace2Collector(configuration: trace2Options.collector, logger: logger)
        let trace2 = try await Trace2Runtime.start(
            trace2Options, collector: collector, group: MultiThreadedEventLoopGroup.singleton, logger: logger)
        let pipeline = SpanPipeline(sinks: [sink], metrics: nil, observer: collector, logger: logger)
        let tapSocket = scratch + "/tap.sock"
        let proxy = TapProxy(
            configuration: ProxyConfiguration(listen: .unix(path: tapSocket), upstream: .unix(path: gitalySocket)),
            pipeline: pipeline, group: MultiThreadedEventLoopGroup.singleton, logger: logger)
        _ = try await proxy.start()
        print("  tap         unix:\(tapSocket) -> unix:\(gitalySocket)")
        print("")

        var generator = SystemRandomNumberGenerator()
        let sshTrace = TraceID.random(using: &generator).description
        let httpTrace = TraceID.random(using: &generator).description
        let spans: [Span] = try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { await pipeline.run(flushInterval: .milliseconds(50)) }
            do {
                try await clones(
                    peer: peer, git: git, scratch: scratch, tapSocket: tapSocket, environment: environment,
                    sshTrace: sshTrace, httpTrace: httpTrace, print: print)
            } catch {
                await proxy.stop(drain: .seconds(1))
                await trace2.stop()
                pipeline.finish()
                try await tasks.waitForAll()
                throw error
            }
            // Every client is gone: draining closes the connections and flushes their spans.
            await proxy.stop(drain: .seconds(5))
            await trace2.stop()
            pipeline.finish()
            try await tasks.waitForAll()
            return sink.collected
        }
        print("")
        print("What the tap recorded, one span per RPC (one tree per trace):")
        print("")
        let rpcSpans = spans.filter { $0.name != "gitaly-tap/connection" }
        print(TraceTreeFormatter().format(rpcSpans))
        let connections = spans.filter { $0.name == "gitaly-tap/connection" }
        if !connections.isEmpty {
            print("")
            print("Connections:")
            for span in connections.sorted(by: { $0.startTimeUnixNano < $1.startTimeUnixNano }) {
                var kind = "?"
                if case .string(let value)? = span.attributes["tap.connection.kind"] { kind = value }
                var up: Int64 = 0
                var down: Int64 = 0
                if case .int(let value)? = span.attributes["tap.connection.bytes_to_server"] { up = value }
                if case .int(let value)? = span.attributes["tap.connection.bytes_to_client"] { down = value }
                print(
                    "  \(kind): \(TraceTreeFormatter.bytes(up)) to Gitaly, \(TraceTreeFormatter.bytes(down)) to the client, "
                        + TraceTreeFormatter.duration(span.endTimeUnixNano &- span.startTimeUnixNano))
            }
        }
        return spans
    }

    /// The two clones through the tap.
    private static func clones(
        peer: String, git: String, scratch: String, tapSocket: String, environment: [String: String],
        sshTrace: String, httpTrace: String, print: @Sendable (String) -> Void
    ) async throws {
        let target = "unix:" + tapSocket
        let shell = [peer, "shell", "--target", target, "--correlation-id", "demo-ssh-clone", "--trace-id", sshTrace]
            .map(shellQuoted).joined(separator: " ")
        print("[1/2] git clone ssh://git@gitaly/group/demo.git   (GitLab-Shell-like client as GIT_SSH_COMMAND)")
        var env = environment
        env["GIT_SSH_COMMAND"] = shell
        env["GIT_SSH_VARIANT"] = "ssh"
        try await runChecked(
            git, ["clone", "-q", "ssh://git@gitaly/group/demo.git", scratch + "/clone-ssh"], environment: env)
        print(
            "      done: " + (try await cloneSummary(git: git, clone: scratch + "/clone-ssh", environment: environment))
        )

        let workhorse = try BackgroundProcess(
            peer, ["workhorse", "--target", target], environment: environment, logDirectory: scratch, name: "workhorse")
        defer { workhorse.stop() }
        let ready = try await workhorse.waitReady()
        guard let data = ready.dropFirst("READY ".count).data(using: .utf8),
            let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
            let url = object["url"] as? String
        else { throw DemoError("the Workhorse-like peer printed an unexpected READY line: \(ready)") }
        print("[2/2] git clone \(url)/group/demo.git   (Workhorse-like client)")
        try await runChecked(
            git,
            [
                "-c", "http.extraHeader=X-Request-Id: demo-http-clone",
                "-c", "http.extraHeader=traceparent: 00-\(httpTrace)-00f067aa0ba902b7-01",
                "clone", "-q", url + "/group/demo.git", scratch + "/clone-http",
            ], environment: environment)
        print(
            "      done: "
                + (try await cloneSummary(git: git, clone: scratch + "/clone-http", environment: environment)))
        workhorse.stop()
    }

    private static func cloneSummary(git: String, clone: String, environment: [String: String]) async throws -> String {
        let count = try await runChecked(git, ["-C", clone, "rev-list", "--count", "--all"], environment: environment)
        let packDir = clone + "/.git/objects/pack"
        let pack =
            (try? FileManager.default.contentsOfDirectory(atPath: packDir))?.filter { $0.hasSuffix(".pack") }
            .reduce(Int64(0)) { total, name in
                let attributes = try? FileManager.default.attributesOfItem(atPath: packDir + "/" + name)
                return total + ((attributes?[.size] as? NSNumber)?.int64Value ?? 0)
            } ?? 0
        return
            "\(count.trimmingCharacters(in: .whitespacesAndNewlines)) commits, pack \(TraceTreeFormatter.bytes(pack))"
    }

    private static func makeRepository(git: String, scratch: String, environment: [String: String]) async throws
        -> (path: String, commits: Int)
    {
        let source = scratch + "/source"
        let bare = scratch + "/storage/group/demo.git"
        try await runChecked(git, ["init", "-q", "-b", "main", source], environment: environment)
        let identity = ["-c", "user.name=Demo", "-c", "user.email=demo@example.com"]
        let files = [
            ("README.md", "# demo\n\nA small repository cloned through gitaly-tap.\n"),
            ("src/main.c", "#include <stdio.h>\n\nint main(void) { puts(\"hello, gitaly-tap\"); return 0; }\n"),
            (
                "NOTES.txt",
                (1...2000).map { "note \($0): the tap forwards every byte untouched" }.joined(separator: "\n")
            ),
        ]
        for (index, (name, text)) in files.enumerated() {
            let path = source + "/" + name
            try FileManager.default.createDirectory(
                atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            try await runChecked(git, ["-C", source, "add", name], environment: environment)
            try await runChecked(
                git, ["-C", source] + identity + ["commit", "-q", "-m", "commit \(index + 1): \(name)"],
                environment: environment)
        }
        try await runChecked(git, ["-C", source, "tag", "v1.0"], environment: environment)
        try await runChecked(git, ["init", "-q", "--bare", "-b", "main", bare], environment: environment)
        try await runChecked(git, ["-C", source, "push", "-q", bare, "main", "v1.0"], environment: environment)
        return (bare, files.count)
    }

    private static func makeScratchDirectory() throws -> String {
        var template = Array("/tmp/gitaly-tap-demo-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw DemoError("cannot create a directory under /tmp") }
        return String(cString: made)
    }

    private static func findOnPath(_ name: String) throws -> String {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for dir in path.split(separator: ":") where FileManager.default.isExecutableFile(atPath: "\(dir)/\(name)") {
            return "\(dir)/\(name)"
        }
        throw DemoError("\(name) not found on PATH: install git (2.39 or later)")
    }

    static func shellQuoted(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'" }

    /// Runs a command to completion off the cooperative pool; fails with its stderr on a non-zero exit.
    @discardableResult
    static func runChecked(_ executable: String, _ arguments: [String], environment: [String: String]) async throws
        -> String
    {
        let result = try await NIOThreadPool.singleton.runIfActive { () throws -> (Int32, String, String) in
            let process = Process()
            process.executableURL = URL(fileURLWithPath: executable)
            process.arguments = arguments
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
            let out = Pipe()
            let err = Pipe()
            process.standardOutput = out
            process.standardError = err
            process.standardInput = FileHandle.nullDevice
            try process.run()
            let errorText = ThreadBox()
            let reader = Thread { errorText.set(PipeReading.readAll(err.fileHandleForReading)) }
            reader.start()
            let output = PipeReading.readAll(out.fileHandleForReading)
            process.waitUntilExit()
            return (process.terminationStatus, String(decoding: output, as: UTF8.self), errorText.wait())
        }
        guard result.0 == 0 else {
            let command = ([URL(fileURLWithPath: executable).lastPathComponent] + arguments).joined(separator: " ")
            throw DemoError(
                "\(command) failed (exit \(result.0)): \(result.2.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        return result.1
    }
}

/// Stderr text handed from a reader thread.
private final class ThreadBox: @unchecked Sendable {
    private let condition = NSCondition()
    private var data: Data?

    func set(_ value: Data) {
        condition.lock()
        data = value
        condition.signal()
        condition.unlock()
    }

    func wait() -> String {
        condition.lock()
        while data == nil { condition.wait() }
        let value = data!
        condition.unlock()
        return String(decoding: value, as: UTF8.self)
    }
}

/// A peer running in the background, its output in `<logDirectory>/<name>.out|.err`.
final class BackgroundProcess: @unchecked Sendable {
    let process = Process()
    let stdoutPath: String
    let stderrPath: String

    init(_ executable: String, _ arguments: [String], environment: [String: String], logDirectory: String, name: String)
        throws
    {
        stdoutPath = logDirectory + "/\(name).out"
        stderrPath = logDirectory + "/\(name).err"
        FileManager.default.createFile(atPath: stdoutPath, contents: nil)
        FileManager.default.createFile(atPath: stderrPath, contents: nil)
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        process.standardOutput = FileHandle(forWritingAtPath: stdoutPath)
        process.standardError = FileHandle(forWritingAtPath: stderrPath)
        process.standardInput = FileHandle.nullDevice
        do {
            try process.run()
        } catch {
            throw DemoError("cannot start \(executable): \(error)")
        }
    }

    /// Waits for the peer's `READY` line.
    func waitReady(timeout: Duration = .seconds(30)) async throws -> String {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let text = (try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? ""
            if let line = text.split(separator: "\n").first(where: { $0.hasPrefix("READY") }) { return String(line) }
            if !process.isRunning { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        let stderr = (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? ""
        throw DemoError("\(process.executableURL?.lastPathComponent ?? "peer") did not start: \(stderr.suffix(1000))")
    }

    func stop() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
    }
}
