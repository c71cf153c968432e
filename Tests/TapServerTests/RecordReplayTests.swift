import Foundation
import NIOCore
import TapRecord
import TapServer
import TapWire
import Testing

/// `proxy --record`, `inspect`, `replay` and `serve`, with HGitaly (a real Gitaly-protocol server) and the built
/// `gitaly-tap` executable run as a process of its own.
@Suite(.serialized)
struct RecordReplayTests {
    static let authHex = String(repeating: "5e1f", count: 16)

    static func startHGitaly(_ dir: TempDir) async throws -> PeerProcess {
        let server = try PeerProcess(
            Peers.python,
            [
                Peers.script("hgitaly_serve.py"), "--setup", "--root", dir.file("repos"), "--listen",
                "unix:" + dir.file("hg.sock"),
            ],
            dir: dir, name: "hgitaly")
        _ = try await server.waitReady(timeout: .seconds(120))
        return server
    }

    static func startTap(_ dir: TempDir, record: String, extra: [String] = [], environment: [String: String]? = nil)
        async throws -> PeerProcess
    {
        let tap = try PeerProcess(
            try Peers.tapExecutable(),
            [
                "proxy", "--listen", "unix:" + dir.file("tap.sock"), "--upstream", "unix:" + dir.file("hg.sock"),
                "--spans", dir.file("spans.jsonl"), "--record", record, "--log-format", "json",
            ] + extra,
            dir: dir, name: "tap", environment: environment)
        try await tap.waitForFile(dir.file("tap.sock"))
        return tap
    }

    static func client(_ target: String, _ args: [String] = ["--calls", "all"]) async throws -> CommandResult {
        try await runCommand(Peers.python, [Peers.script("hgitaly_client.py"), "--target", target] + args)
    }

    static func tap(_ args: [String]) async throws -> CommandResult {
        try await runCommand(try Peers.tapExecutable(), args)
    }

    static func jsonLines(_ text: String) -> [[String: Any]] {
        text.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
    }

    static func hg(_ dir: TempDir, _ args: [String]) async throws -> CommandResult {
        let result = try await runCommand(
            Peers.repo.appendingPathComponent(".peers/venv/bin/hg").path, ["-R", dir.file("repos/proj.hg")] + args,
            environment: ["HGRCPATH": dir.file("repos/hgrc")])
        #expect(result.status == 0, "hg \(args): \(result.stderr)")
        return result
    }

    @Test(
        "an HGitaly session recorded through the tap: inspect lists it, replay matches, serve answers alike, a new commit shows as precise differences"
    )
    func recordInspectReplayServe() async throws {
        try Peers.requirePython()
        let dir = try TempDir()
        defer { dir.cleanup() }
        let hgitaly = try await Self.startHGitaly(dir)
        defer { hgitaly.stop() }
        let recording = dir.file("session.gtap")
        let tap = try await Self.startTap(dir, record: recording)
        let direct = try await Self.client("unix:" + dir.file("hg.sock"))
        let tapped = try await Self.client("unix:" + dir.file("tap.sock"))
        tap.stop()
        #expect(direct.status == 0, "\(direct.stdout)\n\(direct.stderr)")
        #expect(tapped.stdout == direct.stdout, "answers differ through the recording tap")
        let expected = Self.jsonLines(direct.stdout)
        #expect(expected.count == 15)

        // The file: private, and no trace of the token.
        let mode = try FileManager.default.attributesOfItem(atPath: recording)[.posixPermissions] as? Int
        #expect(mode == 0o600)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: recording))
        let lowered = Data(bytes.map { $0 >= 0x41 && $0 <= 0x5A ? $0 | 0x20 : $0 })
        #expect(lowered.range(of: Data("authorization".utf8)) == nil, "the word authorization is in the recording")
        #expect(bytes.range(of: Data(Self.authHex.utf8)) == nil, "the token's signature is in the recording")
        #expect(bytes.range(of: Data("Bearer".utf8)) == nil)

        // inspect: the summary and the JSON export list every call as the client saw it.
        let summary = try await Self.tap(["inspect", recording])
        #expect(summary.status == 0, "\(summary.stderr)")
        #expect(summary.stdout.contains("\(recording): complete"))
        #expect(summary.stdout.contains("calls: 15"))
        for result in expected {
            #expect(summary.stdout.contains(result["method"] as! String))
        }
        #expect(summary.stdout.contains("NOT_FOUND×1"))
        #expect(summary.stdout.contains("UNIMPLEMENTED×1"))
        let export = try await Self.tap(["inspect", "--json", recording])
        #expect(export.status == 0, "\(export.stderr)")
        let lines = Self.jsonLines(export.stdout)
        let calls = lines.filter { $0["type"] as? String == "call" }
        #expect(calls.count == expected.count)
        #expect(Set(calls.map { $0["method"] as! String }).count >= 10)
        for (call, result) in zip(calls, expected) {
            let name = result["call"] as! String
            #expect(call["method"] as? String == result["method"] as? String, "\(name)")
            #expect(call["statusName"] as? String == result["status"] as? String, "\(name)")
            #expect(call["responseMessages"] as? Int == result["messages"] as? Int, "\(name)")
            #expect(call["responseBytes"] as? Int == result["bytes"] as? Int, "\(name)")
            #expect(
                call["requestHeaders"].flatMap { ($0 as? [String: Any])?["authorization"] as? String } == "[redacted]",
                "\(name)")
        }
        let archive = try #require(calls.first { ($0["method"] as? String)?.hasSuffix("/GetArchive") == true })
        #expect((archive["responseBytes"] as? Int ?? 0) >= 16 << 20)
        #expect((archive["responseMessages"] as? Int ?? 0) > 1, "GetArchive streams many messages")
        let archiveMessages = lines.filter {
            $0["type"] as? String == "message" && $0["call"] as? Int == archive["id"] as? Int
                && $0["direction"] as? String == "response"
        }
        let archiveBytes = archiveMessages.compactMap { ($0["payload"] as? String).flatMap { Data(base64Encoded: $0) } }
        #expect(archiveBytes.reduce(0) { $0 + $1.count } == archive["responseBytes"] as? Int)

        // replay against the same HGitaly: everything matches, at the recorded pace and as fast as possible.
        let replay = try await Self.tap(["replay", recording, "--target", "unix:" + dir.file("hg.sock")])
        #expect(replay.status == 0, "\(replay.stdout)\n\(replay.stderr)")
        #expect(replay.stdout.contains("result: all 15 calls matched"), "\(replay.stdout)")
        #expect(replay.stdout.contains("latency (ms)"))
        let fast = try await Self.tap([
            "replay", recording, "--target", "unix:" + dir.file("hg.sock"), "--rate", "max", "--concurrency", "4",
        ])
        #expect(fast.status == 0, "\(fast.stdout)\n\(fast.stderr)")

        // serve: the same client gets the same answers from the stand-in.
        let serve = try PeerProcess(
            try Peers.tapExecutable(),
            ["serve", recording, "--listen", "unix:" + dir.file("serve.sock"), "--log-format", "json"],
            dir: dir, name: "serve")
        defer { serve.stop() }
        try await serve.waitForFile(dir.file("serve.sock"))
        let served = try await Self.client("unix:" + dir.file("serve.sock"))
        #expect(served.status == 0, "\(served.stdout)\n\(served.stderr)")
        #expect(served.stdout == direct.stdout, "serve answers differ from HGitaly's")
        let unknown = try await Self.client(
            "unix:" + dir.file("serve.sock"), ["--calls", "RepositoryExists", "--repo", "other.git"])
        let unknownResult = try #require(Self.jsonLines(unknown.stdout).first)
        #expect(unknownResult["status"] as? String == "UNIMPLEMENTED")
        #expect(
            (unknownResult["details"] as? String ?? "").hasPrefix(
                "gitaly-tap serve: no recorded call of /gitaly.RepositoryService/RepositoryExists had these request messages"
            ),
            "\(unknownResult)")
        serve.stop()

        // A new commit upstream: replay names the calls and the fields that changed.
        let count = try #require(
            (expected.first { $0["call"] as? String == "CountCommits" }?["summary"] as? [String: Any])?["count"] as? Int
        )
        _ = try await Self.hg(dir, ["update", "-q", "default"])
        try Data("new\n".utf8).write(to: URL(fileURLWithPath: dir.file("repos/proj.hg/newfile.txt")))
        _ = try await Self.hg(dir, ["commit", "-q", "-A", "-m", "a new commit", "-d", "2024-01-01 00:00:00 +0000"])
        let node = try await Self.hg(dir, ["log", "-r", "tip", "-T", "{node}"]).stdout
        #expect(node.count == 40)
        let changed = try await Self.tap([
            "replay", recording, "--target", "unix:" + dir.file("hg.sock"), "--rate", "max",
        ])
        #expect(changed.status == 1, "\(changed.stdout)\n\(changed.stderr)")
        let report = changed.stdout
        func differences(_ method: String) -> String {
            let lines = report.split(separator: "\n", omittingEmptySubsequences: false)
            guard let at = lines.firstIndex(where: { $0.hasPrefix("DIFFERS ") && $0.hasSuffix(method + ":") }) else {
                return ""
            }
            return lines[(at + 1)...].prefix { $0.hasPrefix("    ") }.joined(separator: "\n")
        }
        #expect(
            differences("/gitaly.CommitService/CountCommits").contains("field 1[0]: \(count) vs \(count + 1)"),
            "\(report)")
        #expect(differences("/gitaly.CommitService/FindCommits").contains(node), "\(report)")
        #expect(differences("/gitaly.CommitService/ListFiles").contains("\"newfile.txt\""), "\(report)")
        #expect(differences("/gitaly.RefService/FindAllBranches").contains(node), "\(report)")
        #expect(differences("/gitaly.RepositoryService/RepositoryExists").isEmpty, "\(report)")
        #expect(
            differences("/gitaly.RepositoryService/GetArchive").isEmpty, "the archive is of a fixed commit: \(report)")
        #expect(report.contains("calls did not match"))
    }

    @Test("a recording killed with SIGKILL while writing reads up to the torn record")
    func killedMidWrite() async throws {
        try Peers.requirePython()
        let dir = try TempDir()
        defer { dir.cleanup() }
        let hgitaly = try await Self.startHGitaly(dir)
        defer { hgitaly.stop() }
        var torn = false
        for attempt in 0..<3 where !torn {
            let recording = dir.file("killed\(attempt).gtap")
            // A slow disk keeps the writer busy, so the kill lands inside the recording of the archive.
            let tap = try await Self.startTap(
                dir, record: recording, environment: ["GITALY_TAP_RECORD_BLOCK_DELAY_MS": "5"])
            let client = Task {
                try await Self.client("unix:" + dir.file("tap.sock"), ["--calls", "RepositoryExists,GetArchive"])
            }
            let deadline = ContinuousClock.now + .seconds(60)
            while ContinuousClock.now < deadline {
                let size = (try? FileManager.default.attributesOfItem(atPath: recording)[.size] as? Int) ?? 0
                if size > 4 << 20 { break }
                try await Task.sleep(for: .milliseconds(5))
            }
            tap.signal(SIGKILL)
            tap.stop()
            _ = try? await client.value
            try? FileManager.default.removeItem(atPath: dir.file("tap.sock"))

            let size = try FileManager.default.attributesOfItem(atPath: recording)[.size] as! Int
            #expect(size > 4 << 20)
            let session = try RecordedSession.load(path: recording)
            #expect(!session.endedInOrder)
            let exists = try #require(session.calls.first)
            #expect(exists.path == "/gitaly.RepositoryService/RepositoryExists")
            #expect(exists.statusName == "OK")
            let archive = try #require(session.calls.dropFirst().first)
            #expect(archive.path == "/gitaly.RepositoryService/GetArchive")
            #expect(archive.end == nil, "the archive call was cut by the kill")
            #expect(!archive.responses.isEmpty)
            #expect(archive.responses.allSatisfy { !$0.truncated }, "every message read is whole")
            let summary = try await Self.tap(["inspect", recording])
            #expect(summary.status == 0, "\(summary.stderr)")
            switch session.tails.first?.tail {
            case .torn(let offset, let bytes, _)?:
                torn = true
                #expect(offset + bytes == UInt64(size))
                #expect(bytes > 0)
                #expect(summary.stdout.contains("torn tail at byte \(offset)"), "\(summary.stdout)")
            case .unterminated?:
                // The kill fell exactly between two records: sound, just not closed. Try again.
                #expect(summary.stdout.contains("no end marker"))
            default:
                Issue.record("unexpected tail \(String(describing: session.tails.first?.tail))")
            }
        }
        #expect(torn, "no attempt left a torn record")
    }

    @Test("a disk too slow for the traffic stops the recording with one log line; the answers are unchanged")
    func slowDiskStopsRecording() async throws {
        try Peers.requirePython()
        let dir = try TempDir()
        defer { dir.cleanup() }
        let hgitaly = try await Self.startHGitaly(dir)
        defer { hgitaly.stop() }
        let recording = dir.file("slow.gtap")
        let tap = try await Self.startTap(
            dir, record: recording, extra: ["--record-max-queue-bytes", "\(1 << 20)"],
            environment: ["GITALY_TAP_RECORD_BLOCK_DELAY_MS": "50"])
        let args = ["--calls", "RepositoryExists,GetArchive,CountCommits,FindAllBranches"]
        let tapped = try await Self.client("unix:" + dir.file("tap.sock"), args)
        let direct = try await Self.client("unix:" + dir.file("hg.sock"), args)
        tap.stop()
        #expect(tapped.status == 0, "\(tapped.stderr)")
        #expect(tapped.stdout == direct.stdout)
        let stopped = tap.stderr.split(separator: "\n").filter { $0.contains("recording stopped") }
        #expect(stopped.count == 1, "\(tap.stderr)")
        #expect(stopped.first?.contains("fell behind the traffic") == true)
        let session = try RecordedSession.load(path: recording)
        #expect(
            session.notices.contains {
                $0.kind == .recordingStopped && $0.text.contains("fell more than 1048576 bytes behind")
            })
        #expect(session.endedInOrder)
    }

    @Test("a write error (file size limit, as on a full disk) stops the recording with one log line; traffic goes on")
    func writeFailureStopsRecording() async throws {
        try Peers.requirePython()
        let dir = try TempDir()
        defer { dir.cleanup() }
        let hgitaly = try await Self.startHGitaly(dir)
        defer { hgitaly.stop() }
        let recording = dir.file("full.gtap")
        let limit = 3 << 20
        let tap = try PeerProcess(
            "/usr/bin/prlimit",
            [
                "--fsize=\(limit)", try Peers.tapExecutable(), "proxy", "--listen", "unix:" + dir.file("tap.sock"),
                "--upstream", "unix:" + dir.file("hg.sock"), "--spans", dir.file("spans.jsonl"), "--record", recording,
                "--log-format", "json",
            ],
            dir: dir, name: "tap")
        try await tap.waitForFile(dir.file("tap.sock"))
        let args = ["--calls", "RepositoryExists,GetArchive,CountCommits,FindAllBranches"]
        let tapped = try await Self.client("unix:" + dir.file("tap.sock"), args)
        let direct = try await Self.client("unix:" + dir.file("hg.sock"), args)
        let again = try await Self.client("unix:" + dir.file("tap.sock"), args)
        tap.stop()
        #expect(tapped.status == 0, "\(tapped.stderr)")
        #expect(tapped.stdout == direct.stdout)
        #expect(again.stdout == direct.stdout, "the tap still forwards after the recording failed")
        let stopped = tap.stderr.split(separator: "\n").filter { $0.contains("recording stopped") }
        #expect(stopped.count == 1, "\(tap.stderr)")
        #expect(stopped.first?.contains("File too large") == true, "\(tap.stderr)")
        let size = try FileManager.default.attributesOfItem(atPath: recording)[.size] as! Int
        #expect(size <= limit)
        let session = try RecordedSession.load(path: recording)
        #expect(session.calls.first?.path == "/gitaly.RepositoryService/RepositoryExists")
        #expect(!session.endedInOrder)
    }

    @Test("replay signs authorization with the shared secret; a server checking it with its own HMAC accepts it")
    func replaySignsToken() async throws {
        try Peers.requirePython()
        let dir = try TempDir()
        defer { dir.cleanup() }
        let secret = dir.file("secret")
        try Data("it's a secret to everybody\n".utf8).write(to: URL(fileURLWithPath: secret))
        let wrong = dir.file("wrong")
        try Data("not the secret".utf8).write(to: URL(fileURLWithPath: wrong))
        let server = try PeerProcess(
            Peers.python,
            [Peers.script("auth_server.py"), "--listen", "unix:" + dir.file("auth.sock"), "--secret-file", secret],
            dir: dir, name: "auth")
        defer { server.stop() }
        _ = try await server.waitReady()

        let recording = dir.file("auth.gtap")
        let writer = try RecordingWriter(
            path: recording, limits: RecordingLimits(), listen: "unix:/l", upstream: "unix:/u", toolVersion: "test",
            clock: { 1 })
        let field = { (name: String, value: String) in RecordedHeader(name: name, value: Array(value.utf8)) }
        for record: SessionRecord in [
            .callStarted(
                call: 1, connection: 1, time: 1, streamID: 1, yamuxStreamID: nil, fromGitaly: false,
                path: "/test.Auth/Check",
                headers: [
                    field(":method", "POST"), field(":path", "/test.Auth/Check"),
                    field("content-type", "application/grpc"),
                    field("te", "trailers"), RecordedHeader(name: "authorization", value: [], redacted: true),
                ]),
            .message(
                call: 1, time: 2, direction: .clientToServer, compressed: false, length: 5,
                payload: ByteChain(ByteBuffer(string: "hello"))),
            .requestEnded(call: 1, time: 2),
            .responseHeaders(
                call: 1, time: 3, headers: [field(":status", "200"), field("content-type", "application/grpc")]),
            .message(
                call: 1, time: 3, direction: .serverToClient, compressed: false, length: 5,
                payload: ByteChain(ByteBuffer(string: "hello"))),
            .trailers(call: 1, time: 4, trailersOnly: false, headers: [field("grpc-status", "0")]),
            .callEnded(call: 1, time: 4, end: .trailers),
        ] {
            try writer.append(record)
        }
        try writer.finish()

        let target = "unix:" + dir.file("auth.sock")
        let signed = try await Self.tap(["replay", recording, "--target", target, "--token-file", secret])
        #expect(signed.status == 0, "\(signed.stdout)\n\(signed.stderr)")
        #expect(signed.stdout.contains("result: all 1 calls matched"))
        let unsigned = try await Self.tap(["replay", recording, "--target", target])
        #expect(unsigned.status == 1)
        #expect(
            unsigned.stdout.contains(
                "status: recorded OK, replayed UNAUTHENTICATED (auth_server: no authorization metadata)"),
            "\(unsigned.stdout)")
        let badly = try await Self.tap(["replay", recording, "--target", target, "--token-file", wrong])
        #expect(badly.status == 1)
        #expect(badly.stdout.contains("auth_server: bad signature"), "\(badly.stdout)")
    }
}

extension RecordReplayTests {
    /// Shapes HGitaly does not serve: client streaming, bidi, a 5 MiB upload, Trailers-Only, metadata, a client
    /// cancelling after the first answer, a client deadline.
    static let echoScenarios = [
        "unary", "unary_large", "client_stream", "server_stream", "bidi", "metadata", "error", "trailers_only",
        "cancel", "deadline",
    ]

    @Test(
        "echo calls of every shape (5 MiB upload, client stream, bidi, cancel, deadline) replay matched; serve answers them alike"
    )
    func echoShapes() async throws {
        try Peers.requirePython()
        let dir = try TempDir()
        defer { dir.cleanup() }
        let echo = try PeerProcess(
            Peers.python, [Peers.script("echo_server.py"), "--listen", "unix:" + dir.file("hg.sock")], dir: dir,
            name: "echo")
        defer { echo.stop() }
        _ = try await echo.waitReady()
        let recording = dir.file("echo.gtap")
        // The 5 MiB messages are kept whole (the default cap is 4 MiB), so they can be sent and served again.
        let tap = try await Self.startTap(dir, record: recording, extra: ["--record-max-message-bytes", "\(8 << 20)"])
        func run(_ target: String, _ scenario: String) async throws -> CommandResult {
            try await runCommand(
                Peers.python, [Peers.script("echo_client.py"), "--target", target, "--scenario", scenario])
        }
        var direct: [String: String] = [:]
        for scenario in Self.echoScenarios {
            let tapped = try await run("unix:" + dir.file("tap.sock"), scenario)
            #expect(tapped.status == 0, "\(scenario): \(tapped.stdout) \(tapped.stderr)")
            direct[scenario] = try await run("unix:" + dir.file("hg.sock"), scenario).stdout
            #expect(tapped.stdout == direct[scenario], "\(scenario)")
        }
        tap.stop()
        let secret = dir.file("secret")
        try Data("any".utf8).write(to: URL(fileURLWithPath: secret))
        // The echo server lists the metadata keys it got: `authorization` is among them only when re-signed.
        let replay = try await Self.tap([
            "replay", recording, "--target", "unix:" + dir.file("hg.sock"), "--token-file", secret,
        ])
        #expect(replay.status == 0, "\(replay.stdout)\n\(replay.stderr)")
        #expect(replay.stdout.contains("result: all \(Self.echoScenarios.count) calls matched"), "\(replay.stdout)")
        let unsigned = try await Self.tap([
            "replay", recording, "--target", "unix:" + dir.file("hg.sock"), "--rate", "max",
        ])
        #expect(unsigned.status == 1)
        #expect(unsigned.stdout.contains("DIFFERS #6 /taptest.Echo/Unary:"), "\(unsigned.stdout)")
        #expect(unsigned.stdout.contains("1 of \(Self.echoScenarios.count) calls did not match"), "\(unsigned.stdout)")

        let serve = try PeerProcess(
            try Peers.tapExecutable(),
            ["serve", recording, "--listen", "unix:" + dir.file("serve.sock"), "--log-format", "json"],
            dir: dir, name: "serve")
        defer { serve.stop() }
        try await serve.waitForFile(dir.file("serve.sock"))
        // Every shape, bidi ping-pong included: its client waits for each answer before its next request, so the
        // stand-in answers message by message as the recording did.
        for scenario in Self.echoScenarios {
            let served = try await run("unix:" + dir.file("serve.sock"), scenario)
            #expect(served.stdout == direct[scenario], "\(scenario): \(served.stderr)")
        }
        // A ping-pong client that leaves the recording at its fourth message: three answers, then UNIMPLEMENTED
        // saying where.
        let diverging = try await runCommand(
            Peers.python,
            [
                Peers.script("echo_client.py"), "--target", "unix:" + dir.file("serve.sock"), "--scenario", "bidi",
                "--bidi-diverge-at", "3",
            ])
        #expect(diverging.status != 0)
        let out = try JSONSerialization.jsonObject(with: Data(diverging.stdout.utf8)) as? [String: Any]
        #expect(out?["status"] as? String == "UNIMPLEMENTED", "\(diverging.stdout)")
        #expect(out?["replies"] as? Int == 3, "\(diverging.stdout)")
        #expect(
            (out?["details"] as? String)?.contains(
                "the request of /taptest.Echo/Bidi left the recorded call after 4 message(s) (the recording has 50)")
                == true, "\(diverging.stdout)")
    }
}

extension RecordReplayTests {
    @Test("a git clone over the backchannel is recorded with its sidechannel bytes; replay says why it skips that call")
    func backchannelClone() async throws {
        try GoPeers.require()
        let dir = try TempDir()
        defer { dir.cleanup() }
        let bare = try await makeTestRepository(storage: dir.file("storage"), scratch: dir.path)
        let upstream = try await GoPeers.startUpstream(in: dir, storage: dir.file("storage"))
        defer { upstream.process.stop() }
        let recording = dir.file("clone.gtap")
        let tap = try PeerProcess(
            try Peers.tapExecutable(),
            [
                "proxy", "--listen", "unix:" + dir.file("tap.sock"), "--upstream", upstream.unix, "--spans",
                dir.file("spans.jsonl"), "--record", recording, "--redact", "--log-format", "json",
            ],
            dir: dir, name: "tap")
        try await tap.waitForFile(dir.file("tap.sock"))
        let ssh = GoPeers.sshCommand(
            target: "unix:" + dir.file("tap.sock"), arguments: ["--stats", dir.file("shell.stats")])
        try await gitOK(
            ["clone", "-q", "ssh://git@gitaly/group/proj.git", dir.file("clone")],
            environment: ["GIT_SSH_COMMAND": ssh, "GIT_SSH_VARIANT": "ssh"])
        tap.stop()
        _ = bare

        let stats = try #require(GoPeers.jsonLines(dir.file("shell.stats")).first)
        let session = try RecordedSession.load(path: recording)
        #expect(session.endedInOrder)
        let upload = try #require(session.calls.first { $0.path == "/gitaly.SSHService/SSHUploadPackWithSidechannel" })
        #expect(upload.statusName == "OK")
        #expect(upload.requestHeader("username")?.redacted == true, "--redact withholds the user name")
        #expect(upload.requestHeader("user_id")?.redacted == true)
        let sidechannel = try #require(session.sidechannels.first)
        #expect(sidechannel.sidechannelID == Int64(stats["sidechannel_id"] as? Int ?? -1))
        #expect(upload.requestHeader("gitaly-sidechannel-id")?.text == "\(sidechannel.sidechannelID)")
        #expect(sidechannel.bytesToClient == UInt64(stats["sidechannel_read"] as? Int ?? -1))
        #expect(sidechannel.bytesToServer == UInt64(stats["sidechannel_written"] as? Int ?? -1))
        #expect(sidechannel.storedToClient == sidechannel.bytesToClient, "the pack is stored whole")
        #expect(sidechannel.bytesToClient > 1_000_000)
        #expect(!sidechannel.cut)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: recording))
        #expect(bytes.range(of: Data("Bearer".utf8)) == nil)
        #expect(bytes.range(of: Data("tap-tester".utf8)) == nil, "the redacted user name is not in the file")

        let summary = try await Self.tap(["inspect", recording])
        #expect(summary.stdout.contains("sidechannels:"), "\(summary.stdout)")
        let replay = try await Self.tap(["replay", recording, "--target", upstream.unix, "--rate", "max"])
        #expect(replay.status == 1)
        #expect(
            replay.stdout.contains(
                "SKIPPED #\(upload.id) /gitaly.SSHService/SSHUploadPackWithSidechannel: its data travelled in a sidechannel"
            ),
            "\(replay.stdout)")
    }
}

extension RecordReplayTests {
    @Test("serve on tls:// with the dev certificate, replayed over TLS against it: every call matches")
    func replayAgainstServeOverTLS() async throws {
        try Peers.requirePython()
        let dir = try TempDir()
        defer { dir.cleanup() }
        let echo = try PeerProcess(
            Peers.python, [Peers.script("echo_server.py"), "--listen", "unix:" + dir.file("hg.sock")], dir: dir,
            name: "echo")
        defer { echo.stop() }
        _ = try await echo.waitReady()
        let recording = dir.file("echo.gtap")
        let tap = try await Self.startTap(dir, record: recording, extra: ["--record-max-message-bytes", "\(8 << 20)"])
        for scenario in Self.echoScenarios {
            let tapped = try await runCommand(
                Peers.python,
                [Peers.script("echo_client.py"), "--target", "unix:" + dir.file("tap.sock"), "--scenario", scenario])
            #expect(tapped.status == 0, "\(scenario): \(tapped.stderr)")
        }
        tap.stop()

        let port = try freeTCPPort()
        let serve = try PeerProcess(
            try Peers.tapExecutable(),
            [
                "serve", recording, "--listen", "tls://127.0.0.1:\(port)", "--tls-cert", TLSTests.cert("server.pem"),
                "--tls-key", TLSTests.cert("server-key.pem"), "--log-format", "json",
            ],
            dir: dir, name: "serve")
        defer { serve.stop() }
        let deadline = ContinuousClock.now + .seconds(30)
        while !serve.stderr.contains("serving recorded answers"), ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        let target = "tls://127.0.0.1:\(port)"
        let replay = try await Self.tap([
            "replay", recording, "--target", target, "--tls-ca", TLSTests.cert("ca.pem"), "--tls-server-name",
            "localhost",
            "--rate", "max",
        ])
        #expect(replay.status == 0, "\(replay.stdout)\n\(replay.stderr)\n\(serve.stderr)")
        #expect(replay.stdout.contains("result: all \(Self.echoScenarios.count) calls matched"), "\(replay.stdout)")
        let untrusted = try await Self.tap([
            "replay", recording, "--target", target, "--tls-ca", TLSTests.cert("other-ca.pem"), "--tls-server-name",
            "localhost", "--rate", "max",
        ])
        #expect(untrusted.status == 1)
        #expect(untrusted.stderr.contains("TLS handshake with \(target) failed"), "\(untrusted.stderr)")
        #expect(untrusted.stderr.contains("CERTIFICATE_VERIFY_FAILED"), "\(untrusted.stderr)")
    }
}

extension RecordReplayTests {
    /// Nanoseconds from the first call's start to each call's start.
    /// A second tap in front of HGitaly (`hg.sock`) that records when each replayed call reaches it.
    static func startObserver(in dir: TempDir, recording: String) async throws -> PeerProcess {
        let observer = try PeerProcess(
            try Peers.tapExecutable(),
            [
                "proxy", "--listen", "unix:" + dir.file("observer.sock"), "--upstream", "unix:" + dir.file("hg.sock"),
                "--record", recording, "--log-format", "json",
            ],
            dir: dir, name: "observer")
        do {
            try await observer.waitForFile(dir.file("observer.sock"))
        } catch {
            observer.stop()
            throw error
        }
        return observer
    }

    static func offsets(_ calls: [RecordedCall]) -> [Int64] {
        let origin = calls.first?.startTime ?? 0
        return calls.map { Int64($0.startTime) - Int64(origin) }
    }

    @Test(
        "replay --rate 0.5 and --rate 2 send the calls in recorded order, each no earlier than its recorded offset divided by the rate"
    )
    func replayRatePacesCalls() async throws {
        try Peers.requirePython()
        let dir = try TempDir()
        defer { dir.cleanup() }
        let hgitaly = try await Self.startHGitaly(dir)
        defer { hgitaly.stop() }
        let recording = dir.file("paced.gtap")
        let tap = try await Self.startTap(dir, record: recording)
        // One client process per call, with a pause between: the recorded calls are several hundred ms apart, so
        // no two paced sends race for the connection and pacing at 0.5 is far from pacing at 1.
        let names = ["RepositoryExists", "FindDefaultBranchName", "CountCommits", "FindAllBranches"]
        for name in names {
            let run = try await Self.client("unix:" + dir.file("tap.sock"), ["--calls", name])
            #expect(run.status == 0, "\(name): \(run.stdout)\n\(run.stderr)")
            try await Task.sleep(for: .milliseconds(300))
        }
        tap.stop()
        let recorded = try RecordedSession.load(path: recording)
        #expect(recorded.calls.map { String($0.path.split(separator: "/").last ?? "") } == names)
        let recordedOffsets = Self.offsets(recorded.calls)

        // A second recording tap in front of HGitaly notes when each replayed call reaches it.
        let observed = dir.file("observed.gtap")
        let observer = try await Self.startObserver(in: dir, recording: observed)
        defer { observer.stop() }
        let rates = [0.5, 2.0]
        for rate in rates {
            // Progress lines on standard error: every second at rate 0.5 (always one for the last answer), none at 2.
            let progress = rate < 1 ? "1" : "0"
            let replay = try await Self.tap([
                "replay", recording, "--target", "unix:" + dir.file("observer.sock"), "--rate", "\(rate)",
                "--progress", progress,
            ])
            #expect(replay.status == 0, "\(replay.stdout)\n\(replay.stderr)")
            let lines = replay.stderr.split(separator: "\n").filter { $0.hasPrefix("replay: ") }
            if progress == "0" {
                #expect(lines.isEmpty, "\(replay.stderr)")
            } else {
                #expect(lines.last?.hasPrefix("replay: \(names.count) of \(names.count) calls answered (100 %), ") == true,
                    "\(replay.stderr)")
                #expect(!replay.stdout.contains("calls answered"), "progress stays off the report")
            }
            #expect(replay.stdout.contains("(recorded pace ×\(rate), concurrency 16)"), "\(replay.stdout)")
            #expect(replay.stdout.contains("result: all \(names.count) calls matched"), "\(replay.stdout)")
        }
        observer.stop()

        // Each replay is one connection: the first at rate 0.5, the second at rate 2.
        let session = try RecordedSession.load(path: observed)
        var connections: [UInt64] = []
        for call in session.calls where !connections.contains(call.connection) { connections.append(call.connection) }
        #expect(connections.count == rates.count)
        // The first replayed call needs a moment to reach the observer after the replay's clock started; the later
        // ones are measured from it, so they may show up to that moment early. Generous for a busy machine, and far
        // below the recorded gaps (each over half a second), so a replay ignoring the rate still fails.
        let firstCallDelay = 150_000_000.0
        for (rate, connection) in zip(rates, connections) {
            let replayed = session.calls.filter { $0.connection == connection }
            #expect(replayed.map(\.path) == recorded.calls.map(\.path), "rate \(rate): not in recorded order")
            let offsets = Self.offsets(replayed)
            #expect(offsets == offsets.sorted(), "rate \(rate): \(offsets)")
            for (i, (was, now)) in zip(recordedOffsets, offsets).enumerated() {
                #expect(
                    Double(now) >= Double(was) / rate - firstCallDelay,
                    "rate \(rate), call \(i): sent \(now / 1_000_000) ms after the first, recorded \(was / 1_000_000) ms"
                )
            }
        }
    }
}

extension RecordReplayTests {
    @Test("replay --rate max with 16 calls in flight still opens the calls in recorded order")
    func replayAsFastAsPossibleKeepsOrder() async throws {
        try Peers.requirePython()
        let dir = try TempDir()
        defer { dir.cleanup() }
        let hgitaly = try await Self.startHGitaly(dir)
        defer { hgitaly.stop() }
        let recording = dir.file("burst.gtap")
        let tap = try await Self.startTap(dir, record: recording)
        let calls = "RepositoryExists,FindDefaultBranchName,CountCommits,FindAllBranches,FindCommits,ListFiles"
        let run = try await Self.client("unix:" + dir.file("tap.sock"), ["--calls", calls, "--count", "4"])
        #expect(run.status == 0, "\(run.stdout)\n\(run.stderr)")
        tap.stop()
        let recorded = try RecordedSession.load(path: recording)
        #expect(recorded.calls.count == 24)

        let observed = dir.file("observed.gtap")
        let observer = try await Self.startObserver(in: dir, recording: observed)
        defer { observer.stop() }
        let replay = try await Self.tap([
            "replay", recording, "--target", "unix:" + dir.file("observer.sock"), "--rate", "max", "--concurrency",
            "16",
        ])
        observer.stop()
        #expect(replay.status == 0, "\(replay.stdout)\n\(replay.stderr)")
        #expect(replay.stdout.contains("(as fast as possible, concurrency 16)"), "\(replay.stdout)")
        let replayed = try RecordedSession.load(path: observed).calls
        // The observer records calls in the order their HEADERS reached it.
        #expect(replayed.map(\.path) == recorded.calls.map(\.path))
    }
}

extension RecordReplayTests {
    @Test(
        "proxy --record with small files continues in FILE.1, stops with one log line when both are full, never makes FILE.2; inspect reads the chain and answers are unchanged"
    )
    func rotationAndFileLimitThroughTheTap() async throws {
        try Peers.requirePython()
        let dir = try TempDir()
        defer { dir.cleanup() }
        let hgitaly = try await Self.startHGitaly(dir)
        defer { hgitaly.stop() }
        let recording = dir.file("rotated.gtap")
        let maxFileBytes = 64 * 1024
        let tap = try await Self.startTap(
            dir, record: recording,
            extra: ["--record-max-file-bytes", "\(maxFileBytes)", "--record-max-files", "2"])
        // GetArchive streams 16 MiB in 128 KiB messages: the two files fill up inside it.
        let args = ["--calls", "RepositoryExists,GetArchive,CountCommits,FindAllBranches"]
        let tapped = try await Self.client("unix:" + dir.file("tap.sock"), args)
        let direct = try await Self.client("unix:" + dir.file("hg.sock"), args)
        let again = try await Self.client("unix:" + dir.file("tap.sock"), args)
        tap.stop()
        #expect(tapped.status == 0, "\(tapped.stderr)")
        #expect(tapped.stdout == direct.stdout, "answers differ through the tap whose recording filled up")
        #expect(again.stdout == direct.stdout, "the tap still forwards after the recording stopped")

        let second = recording + ".1"
        #expect(FileManager.default.fileExists(atPath: recording))
        #expect(FileManager.default.fileExists(atPath: second))
        #expect(!FileManager.default.fileExists(atPath: recording + ".2"), "a third file was started")
        for file in [recording, second] {
            let attributes = try FileManager.default.attributesOfItem(atPath: file)
            #expect(attributes[.posixPermissions] as? Int == 0o600, "\(file)")
            #expect((attributes[.size] as? Int ?? .max) <= maxFileBytes, "\(file) passed the file cap")
        }
        let stopped = tap.stderr.split(separator: "\n").filter { $0.contains("recording stopped") }
        #expect(stopped.count == 1, "\(tap.stderr)")
        #expect(stopped.first?.contains("file limit reached") == true, "\(tap.stderr)")

        let session = try RecordedSession.load(path: recording)
        #expect(session.segments.map(\.index) == [0, 1])
        #expect(Set(session.segments.map(\.sessionID)).count == 1, "both files belong to one recording")
        #expect(session.tails.map(\.file) == [recording, second])
        #expect(session.tails.allSatisfy { $0.tail == .complete }, "\(session.tails)")
        #expect(session.endedInOrder)
        #expect(
            session.notices.contains {
                $0.kind == .recordingStopped
                    && $0.text == "recording stopped: 2 files of at most \(maxFileBytes) bytes are full"
            })
        // Nothing after the stop is recorded: the archive is cut short and the calls after it are missing.
        #expect(
            session.calls.map(\.path) == [
                "/gitaly.RepositoryService/RepositoryExists", "/gitaly.RepositoryService/GetArchive",
            ])
        #expect(session.calls.first?.statusName == "OK")
        let archive = try #require(session.calls.last)
        #expect(archive.end == nil)
        // Its 128 KiB messages cannot fit a 64 KiB file: each keeps its length and what a file can hold.
        #expect(!archive.responses.isEmpty)
        #expect(archive.responses.allSatisfy { $0.truncated && $0.length > maxFileBytes }, "\(archive.responses)")

        let summary = try await Self.tap(["inspect", recording])
        #expect(summary.status == 0, "\(summary.stderr)")
        #expect(summary.stdout.contains("recording \(recording): 2 file(s)"), "\(summary.stdout)")
        #expect(summary.stdout.contains("  \(recording): complete\n"), "\(summary.stdout)")
        #expect(summary.stdout.contains("  \(second): complete\n"), "\(summary.stdout)")
        #expect(summary.stdout.contains("calls: 2,"), "\(summary.stdout)")
        #expect(summary.stdout.contains("recording stopped: 2 files"), "\(summary.stdout)")
        #expect(summary.stdout.contains("[payload cut at the cap]"), "\(summary.stdout)")
    }
}

@Suite struct GitalyTokenTests {
    private func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

    @Test("HMAC-SHA256 matches RFC 4231 test cases 1, 2 and 6 (key longer than a block)")
    func rfc4231() {
        #expect(
            hex(
                HMACSHA256.authenticationCode(key: [UInt8](repeating: 0x0B, count: 20), message: Array("Hi There".utf8))
            )
                == "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
        #expect(
            hex(
                HMACSHA256.authenticationCode(
                    key: Array("Jefe".utf8), message: Array("what do ya want for nothing?".utf8)))
                == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        #expect(
            hex(
                HMACSHA256.authenticationCode(
                    key: [UInt8](repeating: 0xAA, count: 131),
                    message: Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8)))
                == "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
        #expect(hex(SHA256.hash([])) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    }

    @Test("the v2 token is Bearer v2.<hex HMAC of the decimal time>.<time>")
    func tokenFormat() {
        let token = GitalyToken(secret: Array("s3cret".utf8)).authorization(at: 1_700_000_000)
        let mac = hex(HMACSHA256.authenticationCode(key: Array("s3cret".utf8), message: Array("1700000000".utf8)))
        #expect(token == "Bearer v2.\(mac).1700000000")
    }
}
