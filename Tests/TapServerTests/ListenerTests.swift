import Foundation
import Logging
import NIOPosix
import TapServer
import Testing

/// The listening socket and the upstream's availability: what users run into first.
@Suite
struct ListenerTests {
    static func makeProxy(listen: TapAddress, upstream: TapAddress) -> (TapProxy, SpanPipeline) {
        var logger = Logger(label: "listener-test")
        logger.logLevel = .critical
        let pipeline = SpanPipeline(sinks: [], logger: logger)
        return (
            TapProxy(
                configuration: ProxyConfiguration(listen: listen, upstream: upstream), pipeline: pipeline,
                group: MultiThreadedEventLoopGroup.singleton, logger: logger),
            pipeline
        )
    }

    @Test("a stale socket file is replaced and the new socket is group-accessible")
    func staleSocketIsReplaced() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let path = dir.file("tap.sock")
        // Leave a socket file behind with nobody listening, as a crashed process would.
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var sa = sockaddr_un()
        sa.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &sa.sun_path) { raw in
            raw.copyBytes(from: Array(path.utf8))
            raw[path.utf8.count] = 0
        }
        _ = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        close(fd)
        #expect(FileManager.default.fileExists(atPath: path))

        let (proxy, _) = Self.makeProxy(listen: .unix(path: path), upstream: .unix(path: dir.file("none.sock")))
        try await proxy.start()
        var st = stat()
        #expect(lstat(path, &st) == 0)
        #expect(st.st_mode & S_IFMT == S_IFSOCK)
        #expect(st.st_mode & 0o777 == 0o660)
        await proxy.stop(drain: .zero)
    }

    @Test("a regular file at the listen path is never replaced")
    func regularFileIsRefused() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let path = dir.file("important.txt")
        try "keep me".write(toFile: path, atomically: true, encoding: .utf8)
        let (proxy, _) = Self.makeProxy(listen: .unix(path: path), upstream: .unix(path: dir.file("none.sock")))
        await #expect(throws: ProxyStartError.self) { try await proxy.start() }
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "keep me")
    }

    @Test("a socket another tap is listening on is not taken over")
    func liveSocketIsRefused() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let path = dir.file("tap.sock")
        let (first, _) = Self.makeProxy(listen: .unix(path: path), upstream: .unix(path: dir.file("none.sock")))
        try await first.start()
        let (second, _) = Self.makeProxy(listen: .unix(path: path), upstream: .unix(path: dir.file("none.sock")))
        await #expect(throws: ProxyStartError.self) { try await second.start() }
        await first.stop(drain: .zero)
    }

    @Test("a live datagram socket (another tap's Trace2 dgram target) is not taken over either")
    func liveDatagramSocketIsRefused() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let path = dir.file("trace2.dgram")
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: Array(path.utf8))
            raw[path.utf8.count] = 0
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(bound == 0)
        var before = stat()
        stat(path, &before)
        let (proxy, _) = Self.makeProxy(listen: .unix(path: path), upstream: .unix(path: dir.file("none.sock")))
        await #expect(throws: ProxyStartError.self) { try await proxy.start() }
        var after = stat()
        stat(path, &after)
        #expect(after.st_ino == before.st_ino, "the live datagram socket was replaced")
    }

    @Test("an unreachable upstream closes the client promptly and the tap keeps serving")
    func unreachableUpstreamClosesClient() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let upstreamPath = dir.file("up.sock")
        let (logger, logs) = CapturingLogHandler.logger()
        let proxy = TapProxy(
            configuration: ProxyConfiguration(listen: .unix(path: dir.file("tap.sock")), upstream: .unix(path: upstreamPath)),
            pipeline: SpanPipeline(sinks: [], logger: logger), group: MultiThreadedEventLoopGroup.singleton,
            logger: logger)
        try await proxy.start()
        let started = ContinuousClock.now
        let socket = try RawSocket(connectingTo: "unix:" + dir.file("tap.sock"))
        try? socket.write(Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8))
        // Closed: EOF, or a reset because the bytes sent were never read; a timeout would take 10 s.
        let got = (try? socket.readToEnd(timeout: 10)) ?? 0
        #expect(got == 0)
        #expect(ContinuousClock.now - started < .seconds(5), "client was not closed promptly")
        // The operator is told, once, with the address that could not be reached.
        let failures = logs.all.filter { $0.message.contains("cannot reach upstream") }
        #expect(failures.count == 1, "\(logs.lines)")
        #expect(failures.first?.level == .error)
        #expect(failures.first?.metadata["upstream"]?.contains(upstreamPath) == true, "\(logs.lines)")

        // Once the upstream exists, the same tap forwards.
        let echo = try PeerProcess("/usr/bin/socat", ["UNIX-LISTEN:\(upstreamPath),fork", "EXEC:cat"], dir: dir, name: "cat")
        defer { echo.stop() }
        try await echo.waitForFile(upstreamPath)
        let again = try RawSocket(connectingTo: "unix:" + dir.file("tap.sock"))
        try again.write(Array("ping".utf8))
        again.shutdownWrite()
        var echoed: [UInt8] = []
        _ = try again.readToEnd { echoed += $0 }
        #expect(echoed == Array("ping".utf8))
        await proxy.stop(drain: .seconds(1))
    }
}

/// The command line: errors are one clear line and a non-zero exit, never a stack trace.
@Suite
struct CommandLineTests {
    @Test("bad addresses and bad paths give one line naming the problem", arguments: [
        (["proxy", "--listen", "unix:relative.sock", "--upstream", "unix:/tmp/x.sock"], "must be absolute"),
        (["proxy", "--listen", "tcp://127.0.0.1", "--upstream", "unix:/tmp/x.sock"], "no port"),
        (["proxy", "--listen", "http://x", "--upstream", "unix:/tmp/x.sock"], "not understood"),
        (["proxy", "--listen", "unix:/nonexistent-dir/tap.sock", "--upstream", "unix:/tmp/x.sock"], "cannot listen"),
        (["proxy", "--listen", "unix:/tmp/gtap-cli.sock", "--upstream", "unix:/tmp/x.sock", "--spans", "/nonexistent-dir/s.jsonl"], "cannot open span log"),
    ])
    func userMistakesAreOneLine(arguments: [String], expected: String) async throws {
        let result = try await runCommand(try Peers.tapExecutable(), arguments)
        #expect(result.status != 0)
        let lines = result.stderr.split(separator: "\n").filter { !$0.contains(" info ") }
        #expect(lines.count == 1, "\(result.stderr)")
        #expect(result.stderr.contains(expected), "\(result.stderr)")
        #expect(result.stderr.contains("gitaly-tap: error:"), "\(result.stderr)")
    }
}

/// `--log-format`: JSON lines like Gitaly's, or text; `auto` picks JSON when standard error is not a terminal.
@Suite("Log formats")
struct LogFormatTests {
    @Test("json and auto (standard error is a file here) write one JSON object per line; text writes plain lines",
        arguments: ["json", "auto", "text"])
    func formats(format: String) async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let tap = try PeerProcess(
            try Peers.tapExecutable(),
            ["proxy", "--listen", "unix:" + dir.file("tap.sock"), "--upstream", "unix:" + dir.file("none.sock"),
             "--spans", dir.file("spans.jsonl"), "--log-format", format],
            dir: dir, name: "tap")
        try await tap.waitForFile(dir.file("tap.sock"))
        tap.stop()
        let lines = tap.stderr.split(separator: "\n").map(String.init)
        let listening = try #require(lines.first { $0.contains("listening") }, "\(tap.stderr)")
        let parsed = try? JSONSerialization.jsonObject(with: Data(listening.utf8)) as? [String: Any]
        if format == "text" {
            #expect(parsed == nil, "a text line, not JSON: \(listening)")
            #expect(listening.contains("info"), "\(listening)")
        } else {
            let object = try #require(parsed, "a JSON line: \(listening)")
            #expect(object["msg"] as? String == "listening", "\(object)")
            #expect(object["level"] as? String == "info", "\(object)")
            // Every line is JSON, not only the first.
            for line in lines where !line.isEmpty {
                #expect((try? JSONSerialization.jsonObject(with: Data(line.utf8))) != nil, "\(line)")
            }
        }
    }
}
