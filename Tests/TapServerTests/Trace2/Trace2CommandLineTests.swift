import Foundation
import Testing

/// `gitaly-tap proxy --trace2-socket/--trace2-dir` as a user runs it: git spans in the span log, clear errors.
@Suite("Trace2 command line", .serialized)
struct Trace2CommandLineTests {
    @Test("the executable writes the git processes it hears on its socket and directory to the span log")
    func spansInTheLog() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let watched = dir.file("trace2")
        try FileManager.default.createDirectory(atPath: watched, withIntermediateDirectories: false)
        let socket = dir.file("t2.sock")
        let tap = try PeerProcess(
            try Peers.tapExecutable(),
            [
                "proxy", "--listen", "unix:" + dir.file("tap.sock"), "--upstream", "unix:" + dir.file("nobody.sock"),
                "--spans", dir.file("spans.jsonl"), "--log-format", "json", "--trace2-socket", socket,
                "--trace2-dir", watched,
            ], dir: dir, name: "tap")
        defer { tap.stop() }
        try await tap.waitForFile(dir.file("tap.sock"))
        #expect(
            try await runCommand(
                "/usr/bin/git", ["version"], environment: ["GIT_TRACE2_EVENT": "af_unix:stream:" + socket]
            ).status == 0)
        #expect(
            try await runCommand("/usr/bin/git", ["var", "GIT_EDITOR"], environment: ["GIT_TRACE2_EVENT": watched])
                .status == 0)
        // No waiting: on SIGTERM the sources hand in what is queued (inotify events, file contents) before the
        // pipeline ends.
        tap.signal(SIGTERM)
        _ = try await ShutdownTests.waitExit(tap, timeout: .seconds(30))
        #expect(tap.process.terminationStatus == 0, "\(tap.stderr)")
        let spans = try ShutdownTests.spans(dir)
        let names = spans.compactMap { $0["name"] as? String }
        #expect(names.contains("git version"), "\(names) \(tap.stderr)")
        #expect(names.contains("git var"), "\(names) \(tap.stderr)")
        #expect(!FileManager.default.fileExists(atPath: socket))
    }

    @Test(
        "bad Trace2 options stop the tap with one clear line",
        arguments: [
            (["--trace2-socket", "relative/t2.sock"], "git only accepts an absolute path"),
            (["--trace2-dir", "/nonexistent/gitaly-tmp"], "must be an existing directory"),
            (
                ["--trace2-socket", "/tmp"],
                "exists and is not a socket; refusing to replace it (choose another --trace2-socket path)"
            ),
            (["--trace2-storage", "default"], "--trace2-storage 'default': expected NAME=/absolute/path"),
            (["--trace2-storage", "default=repos"], "--trace2-storage 'default=repos': expected NAME=/absolute/path"),
            (["--trace2-storage", "=/srv/repos"], "--trace2-storage '=/srv/repos': expected NAME=/absolute/path"),
        ])
    func badOptions(arguments: [String], message: String) async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let result = try await runCommand(
            try Peers.tapExecutable(),
            ["proxy", "--listen", "unix:" + dir.file("tap.sock"), "--upstream", "unix:" + dir.file("up.sock")]
                + arguments)
        #expect(result.status != 0)
        let lines = result.stderr.split(separator: "\n").filter { $0.contains("error") }
        #expect(lines.count == 1 && lines[0].contains(message), "\(result.stderr)")
    }

    @Test("the config file takes trace2_socket, trace2_dir and trace2_storage as arrays; --check prints them back")
    func configFile() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let config = """
            listen = "unix:\(dir.file("tap.sock"))"
            upstream = "unix:\(dir.file("up.sock"))"
            trace2_socket = ["\(dir.file("t2.sock"))", "dgram:\(dir.file("t2.dgram"))"]
            trace2_dir = ["\(dir.path)"]
            trace2_storage = ["default=/srv/gitaly/repositories", "other=/srv/other"]
            """
        try config.write(toFile: dir.file("tap.toml"), atomically: true, encoding: .utf8)
        let result = try await runCommand(
            try Peers.tapExecutable(), ["proxy", "--config", dir.file("tap.toml"), "--check"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(
            result.stdout.contains(
                "trace2_socket = [\"\(dir.file("t2.sock"))\", \"dgram:\(dir.file("t2.dgram"))\"]\n"), "\(result.stdout)"
        )
        #expect(result.stdout.contains("trace2_dir = [\"\(dir.path)\"]\n"), "\(result.stdout)")
        #expect(
            result.stdout.contains("trace2_storage = [\"default=/srv/gitaly/repositories\", \"other=/srv/other\"]\n"),
            "\(result.stdout)")
    }
}
