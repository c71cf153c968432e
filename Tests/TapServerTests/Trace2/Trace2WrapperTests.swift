import Foundation
import Testing

/// The git wrapper (Config/git-trace2-wrapper.sh) must never change what git does: with the tap down, or with a
/// collector that drops every connection at once, git commands still succeed with the same results.
@Suite("Trace2 git wrapper without a working tap", .serialized)
struct Trace2WrapperTests {
    /// Makes a repository, commits, clones it and reads the clone's log, all through `git`; returns the log line.
    private static func gitRoundTrip(_ git: String, in dir: TempDir) async throws -> String {
        // No inherited target: the wrapper only sets GIT_TRACE2_EVENT when nobody else did.
        let environment = ["GIT_TRACE2_EVENT": "", "GIT_CONFIG_NOSYSTEM": "1", "HOME": dir.path]
        let steps: [[String]] = [
            ["init", "-q", dir.file("origin")],
            ["-C", dir.file("origin"), "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q",
             "--allow-empty", "-m", "wrapper round trip"],
            ["clone", "-q", dir.file("origin"), dir.file("clone")],
        ]
        for arguments in steps {
            let result = try await runCommand(git, arguments, environment: environment)
            #expect(result.status == 0, "git \(arguments.joined(separator: " ")): \(result.stderr)")
        }
        let log = try await runCommand(git, ["-C", dir.file("clone"), "log", "--format=%s"], environment: environment)
        #expect(log.status == 0, "\(log.stderr)")
        return log.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test("with no tap listening (no socket file), git runs normally through the wrapper")
    func tapDown() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let git = try installTrace2Wrapper(in: dir, socket: dir.file("absent.sock"))
        #expect(try await Self.gitRoundTrip(git, in: dir) == "wrapper round trip")
    }

    @Test("with a collector that closes every connection at once, git still succeeds, and git did connect")
    func collectorDropsConnections() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let socket = dir.file("t2.sock")
        let counter = dir.file("connections")
        // Each accepted connection runs a shell that notes it and exits: the connection closes before git is done.
        let collector = try PeerProcess(
            "/usr/bin/socat", ["UNIX-LISTEN:\(socket),fork", "SYSTEM:echo x >> \(counter)"], dir: dir, name: "dropper")
        defer { collector.stop() }
        try await collector.waitForFile(socket)
        let git = try installTrace2Wrapper(in: dir, socket: socket)
        #expect(try await Self.gitRoundTrip(git, in: dir) == "wrapper round trip")
        // Proof the wrapper pointed git at the socket: the collector saw git's connections (one per git process).
        // The collector's shells may still be writing their line when git returns: wait a little for them.
        var seen = 0
        for _ in 0..<100 {
            seen = (try? String(contentsOfFile: counter, encoding: .utf8))?.split(separator: "\n").count ?? 0
            if seen >= 4 { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(seen >= 4, "connections the collector accepted: \(seen)")
    }
}
