import Foundation
import TapServer
import TapTrace
import Testing

/// Real `git clone` and `git push` through the tap over the backchannel: the Shell-like client (SSH path,
/// SSHUploadPackWithSidechannel / SSHReceivePack) and the Workhorse-like client (smart HTTP path, InfoRefs*,
/// PostUploadPackWithSidechannel, PostReceivePack), against the Gitaly-like Go upstream running real git.
@Suite(.serialized)
struct BackchannelGitTests {
    static let rpcPrefix = "gitaly."

    /// socat relays dumping both directions around the tap: client → a.sock → tap.sock, tap → b.sock → gitaly.
    struct Recording {
        let outer: PeerProcess
        let inner: PeerProcess
        let dir: TempDir
        let name: String

        static func start(_ dir: TempDir, _ name: String, upstream: String) async throws -> Recording {
            let inner = try ByteExactnessTests.recorder(
                dir, name: "\(name)-b", listen: dir.file("b.sock"), connect: upstream)
            let outer = try ByteExactnessTests.recorder(
                dir, name: "\(name)-a", listen: dir.file("a.sock"), connect: dir.file("tap.sock"))
            try await inner.waitForFile(dir.file("b.sock"))
            try await outer.waitForFile(dir.file("a.sock"))
            return Recording(outer: outer, inner: inner, dir: dir, name: name)
        }

        /// Waits for both relays to finish (each carries one connection) and checks the dumps.
        func expectUnchanged(sourceLocation: SourceLocation = #_sourceLocation) async throws {
            for relay in [outer, inner] {
                let deadline = Date().addingTimeInterval(20)
                while !relay.exited, Date() < deadline { try await Task.sleep(for: .milliseconds(20)) }
                #expect(relay.exited, "socat relay still running", sourceLocation: sourceLocation)
            }
            let read = { (suffix: String) in try Data(contentsOf: URL(fileURLWithPath: dir.file("\(name)-\(suffix)"))) }
            let clientSent = try read("a.c2s"), upstreamGot = try read("b.c2s")
            let upstreamSent = try read("b.s2c"), clientGot = try read("a.s2c")
            #expect(clientSent.starts(with: Array("backchannel".utf8)), sourceLocation: sourceLocation)
            #expect(clientSent.count > 0 && upstreamSent.count > 0, sourceLocation: sourceLocation)
            #expect(
                clientSent == upstreamGot, "client→gitaly: \(clientSent.count) sent, \(upstreamGot.count) arrived",
                sourceLocation: sourceLocation)
            #expect(
                upstreamSent == clientGot, "gitaly→client: \(upstreamSent.count) sent, \(clientGot.count) arrived",
                sourceLocation: sourceLocation)
        }
    }

    static func rpcSpans(_ tap: TapHarness, _ correlationID: String) -> [Span] {
        tap.spans(correlationID: correlationID).filter { $0.name.hasPrefix(rpcPrefix) }
    }

    static func traceparent(_ traceID: String) -> String { "00-\(traceID)-00f067aa0ba902b7-01" }

    static func expectCommon(
        _ span: Span, client: String, traceID: String, sourceLocation: SourceLocation = #_sourceLocation
    ) {
        #expect(span.status.code == .ok, "\(span.name): \(span.status)", sourceLocation: sourceLocation)
        #expect(span.attributes["gitlab.client_name"] == .string(client), sourceLocation: sourceLocation)
        #expect(
            span.traceID.description == traceID, "\(span.name) trace \(span.traceID)", sourceLocation: sourceLocation)
        #expect(span.parentSpanID != nil, sourceLocation: sourceLocation)
        #expect(span.attributes["gitaly.backchannel"] == .bool(true), sourceLocation: sourceLocation)
        #expect(span.attributes["gitaly.repository.storage"] == .string("default"), sourceLocation: sourceLocation)
        #expect(
            span.attributes["gitaly.repository.relative_path"] == .string("group/proj.git"),
            sourceLocation: sourceLocation)
        #expect(span.attributes["gitlab.user_id"] == .string("42"), sourceLocation: sourceLocation)
        #expect(span.attributes["gitlab.username"] == .string("tap-tester"), sourceLocation: sourceLocation)
        #expect(span.attributes["rpc.grpc.status_code"] == .int(0), sourceLocation: sourceLocation)
    }

    /// Adds a commit to `clone` and returns its id.
    static func commit(in clone: String, file: String) async throws -> String {
        try "pushed through the tap: \(file)\n".write(toFile: clone + "/" + file, atomically: true, encoding: .utf8)
        try await gitOK(["add", file], in: clone)
        try await gitOK(
            ["-c", "user.name=Tap Tester", "-c", "user.email=tap@example.com", "commit", "-q", "-m", file], in: clone)
        return try await gitOK(["rev-parse", "HEAD"], in: clone).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test(
        "git clone and push over the SSH-like path: identical repository, unchanged bytes, one span per RPC with the sidechannel figures"
    )
    func sshCloneAndPush() async throws {
        try GoPeers.require()
        let dir = try TempDir()
        defer { dir.cleanup() }
        let bare = try await makeTestRepository(storage: dir.file("storage"), scratch: dir.path)
        let upstream = try await GoPeers.startUpstream(in: dir, storage: dir.file("storage"))
        defer { upstream.process.stop() }
        try await gitOK(["clone", "-q", "--no-local", bare, dir.file("direct")])

        try await TapHarness.with(listen: .unix(path: dir.file("tap.sock")), upstream: .unix(path: dir.file("b.sock")))
        { tap in
            // Clone.
            let cloneID = "01JTAPSSHCLONE0000000000001"
            let traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
            let recording = try await Recording.start(dir, "clone", upstream: dir.file("gitaly.sock"))
            let ssh = GoPeers.sshCommand(
                target: "unix:" + dir.file("a.sock"),
                arguments: ["--correlation-id", cloneID, "--trace-id", traceID, "--stats", dir.file("shell.stats")])
            let env = ["GIT_SSH_COMMAND": ssh, "GIT_SSH_VARIANT": "ssh"]
            try await gitOK(
                ["clone", "-q", "ssh://git@gitaly/group/proj.git", dir.file("ssh-clone")], environment: env)
            try await recording.expectUnchanged()

            let direct = try await repositoryFingerprint(dir.file("direct"))
            let cloned = try await repositoryFingerprint(dir.file("ssh-clone"))
            #expect(cloned.refs == direct.refs)
            #expect(cloned.objects == direct.objects)
            #expect(!cloned.objects.isEmpty)

            try await tap.waitForSpans("the clone's span") { _ in !Self.rpcSpans(tap, cloneID).isEmpty }
            try await Task.sleep(for: .milliseconds(300))
            let cloneSpans = Self.rpcSpans(tap, cloneID)
            #expect(cloneSpans.map(\.name) == ["gitaly.SSHService/SSHUploadPackWithSidechannel"])
            let upload = try #require(cloneSpans.first)
            Self.expectCommon(upload, client: "gitlab-shell-git-upload-pack", traceID: traceID)
            #expect(upload.attributes["gitlab.key_id"] == .string("1"))
            let stats = try #require(GoPeers.jsonLines(dir.file("shell.stats")).first)
            #expect(upload.attributes["gitaly.sidechannel_id"] == .int(Int64(stats["sidechannel_id"] as? Int ?? -1)))
            let toClient = upload.attributes["gitaly.sidechannel.bytes_to_client"]?.intValue ?? -1
            let toServer = upload.attributes["gitaly.sidechannel.bytes_to_server"]?.intValue ?? -1
            #expect(
                toClient == Int64(stats["sidechannel_read"] as? Int ?? -2), "bytes Gitaly sent = bytes the client read")
            #expect(toServer == Int64(stats["sidechannel_written"] as? Int ?? -2), "bytes the client sent")
            let pack = try packBytes(dir.file("ssh-clone"))
            let stdout = upload.attributes["gitaly.sidechannel.stdout_bytes"]?.intValue ?? -1
            // upload-pack's stdout holds the pack plus the protocol around it (refs, pkt-line and sideband headers).
            #expect(pack > 1_000_000)
            #expect(
                stdout >= Int64(pack) && stdout <= Int64(pack + pack / 50 + 16_384), "stdout \(stdout), pack \(pack)")
            #expect(stdout < toClient)
            #expect(upload.attributes["gitaly.sidechannel.end"] == .string("closed"))
            // Each way: the request ends before the answer does, the answer's first byte comes before its last,
            // and both fit in the sidechannel's lifetime.
            let whole = upload.attributes["gitaly.sidechannel.duration_ns"]?.intValue ?? -1
            let toGitaly = upload.attributes["gitaly.sidechannel.to_server_duration_ns"]?.intValue ?? -1
            let answer = upload.attributes["gitaly.sidechannel.to_client_duration_ns"]?.intValue ?? -1
            let firstByte = upload.attributes["gitaly.sidechannel.time_to_first_byte_to_client_ns"]?.intValue ?? -1
            #expect(toGitaly >= 0 && toGitaly <= answer, "to Gitaly \(toGitaly) ns, to the client \(answer) ns")
            #expect(firstByte >= 0 && firstByte <= answer, "first byte \(firstByte) ns, last \(answer) ns")
            #expect(answer <= whole, "to the client \(answer) ns, open \(whole) ns")

            // Push.
            let pushID = "01JTAPSSHPUSH00000000000001"
            let head = try await Self.commit(in: dir.file("ssh-clone"), file: "ssh.txt")
            let pushRecording = try await Recording.start(dir, "push", upstream: dir.file("gitaly.sock"))
            let pushSSH = GoPeers.sshCommand(
                target: "unix:" + dir.file("a.sock"), arguments: ["--correlation-id", pushID, "--trace-id", traceID])
            try await gitOK(
                ["push", "-q", "origin", "HEAD:refs/heads/from-ssh"], in: dir.file("ssh-clone"),
                environment: ["GIT_SSH_COMMAND": pushSSH, "GIT_SSH_VARIANT": "ssh"])
            try await pushRecording.expectUnchanged()
            let pushed = try await gitOK(["rev-parse", "refs/heads/from-ssh"], in: bare)
            #expect(pushed.trimmingCharacters(in: .whitespacesAndNewlines) == head)
            try await gitOK(["fsck", "--no-progress"], in: bare)

            try await tap.waitForSpans("the push's span") { _ in !Self.rpcSpans(tap, pushID).isEmpty }
            try await Task.sleep(for: .milliseconds(300))
            let pushSpans = Self.rpcSpans(tap, pushID)
            #expect(pushSpans.map(\.name) == ["gitaly.SSHService/SSHReceivePack"])
            let receive = try #require(pushSpans.first)
            Self.expectCommon(receive, client: "gitlab-shell-git-receive-pack", traceID: traceID)
            #expect((receive.attributes["rpc.grpc.request.messages"]?.intValue ?? 0) >= 2)
            #expect((receive.attributes["rpc.grpc.response.messages"]?.intValue ?? 0) >= 1)
            #expect(receive.attributes["gitaly.sidechannel.bytes_to_client"] == nil)

            // The clients' `authorization` tokens (Bearer v2.<hmac>.<ts>) appear in no span.
            let leaked = tap.sink.collected.filter { span in
                span.attributes.values.contains { "\($0)".contains("Bearer") || "\($0)".contains("v2.") }
            }
            #expect(leaked.isEmpty, "\(leaked.map(\.name))")

            // Both backchannel connections (clone, push) were decoded to the end: Gitaly's gRPC session back to the
            // client (yamux stream 2) and the sidechannel did not stop the decoder.
            let connections = try await tap.waitForSpans("two connection spans") {
                $0.filter { $0.name == "gitaly-tap/connection" }.count >= 2
            }.filter { $0.name == "gitaly-tap/connection" }
            for connection in connections {
                #expect(connection.attributes["tap.connection.kind"] == .string("backchannel"))
                #expect(connection.attributes["tap.decoding.stopped"] == nil, "\(connection.attributes)")
            }
        }
    }

    @Test(
        "git clone and push over the HTTP-like path: identical repository, unchanged bytes, pack bytes in the sidechannels"
    )
    func httpCloneAndPush() async throws {
        try GoPeers.require()
        let dir = try TempDir()
        defer { dir.cleanup() }
        let bare = try await makeTestRepository(storage: dir.file("storage"), scratch: dir.path)
        let upstream = try await GoPeers.startUpstream(in: dir, storage: dir.file("storage"))
        defer { upstream.process.stop() }
        try await gitOK(["clone", "-q", "--no-local", bare, dir.file("direct")])

        try await TapHarness.with(listen: .unix(path: dir.file("tap.sock")), upstream: .unix(path: dir.file("b.sock")))
        { tap in
            let recording = try await Recording.start(dir, "http", upstream: dir.file("gitaly.sock"))
            // One Workhorse, one backchannel connection for the clone and the push (recorded whole).
            let (workhorse, url) = try await GoPeers.startWorkhorse(
                in: dir, name: "workhorse", target: "unix:" + dir.file("a.sock"),
                arguments: [
                    "--stats", dir.file("workhorse.stats"), "--session-id", "6f1c2a4e-9b3d-4c7e-8a5f-0d2b4c6e8f10",
                ])
            let cloneID = "01JTAPHTTPCLONE000000000001"
            let pushID = "01JTAPHTTPPUSH0000000000001"
            let traceID = "0af7651916cd43dd8448eb211c80319c"
            let headers = { (id: String) in
                [
                    "-c", "http.extraHeader=X-Request-Id: \(id)", "-c",
                    "http.extraHeader=traceparent: \(Self.traceparent(traceID))",
                ]
            }
            try await gitOK(headers(cloneID) + ["clone", "-q", url + "/group/proj.git", dir.file("http-clone")])
            let head = try await Self.commit(in: dir.file("http-clone"), file: "http.txt")
            try await gitOK(
                headers(pushID) + ["push", "-q", "origin", "HEAD:refs/heads/from-http"], in: dir.file("http-clone"))
            workhorse.stop()
            try await recording.expectUnchanged()

            let direct = try await repositoryFingerprint(dir.file("direct"))
            let cloned = try await repositoryFingerprint(dir.file("http-clone"), refs: "refs/tags")
            #expect(cloned.refs == (try await repositoryFingerprint(dir.file("direct"), refs: "refs/tags")).refs)
            let clonedMain = try await gitOK(["rev-parse", "refs/remotes/origin/main"], in: dir.file("http-clone"))
            let directMain = try await gitOK(["rev-parse", "refs/remotes/origin/main"], in: dir.file("direct"))
            #expect(clonedMain == directMain)
            // The clone now also holds the pushed commit: compare the objects reachable from the direct clone's refs.
            let reachable = try await gitOK(
                ["rev-list", "--objects", "refs/remotes/origin/main", "v1.0"], in: dir.file("http-clone"))
            #expect(reachable.split(separator: "\n").sorted().joined(separator: "\n") == direct.objects)
            let pushed = try await gitOK(["rev-parse", "refs/heads/from-http"], in: bare)
            #expect(pushed.trimmingCharacters(in: .whitespacesAndNewlines) == head)
            try await gitOK(["fsck", "--no-progress"], in: bare)

            try await tap.waitForSpans("the push's spans") { _ in
                Self.rpcSpans(tap, pushID).contains { $0.name.hasSuffix("/PostReceivePack") }
            }
            try await Task.sleep(for: .milliseconds(300))
            let cloneSpans = Self.rpcSpans(tap, cloneID)
            let infoRefs = cloneSpans.filter { $0.name == "gitaly.SmartHTTPService/InfoRefsUploadPack" }
            let uploads = cloneSpans.filter { $0.name == "gitaly.SmartHTTPService/PostUploadPackWithSidechannel" }
            #expect(infoRefs.count == 1)
            #expect(uploads.count >= 1)
            #expect(infoRefs.count + uploads.count == cloneSpans.count, "\(cloneSpans.map(\.name))")
            let stats = GoPeers.jsonLines(dir.file("workhorse.stats"))
            #expect(stats.count == uploads.count)
            for span in cloneSpans {
                Self.expectCommon(span, client: "gitlab-workhorse", traceID: traceID)
                #expect(span.attributes["gitaly.session_id"] == .string("6f1c2a4e-9b3d-4c7e-8a5f-0d2b4c6e8f10"))
            }
            var packTotal: Int64 = 0
            for span in uploads {
                let id = span.attributes["gitaly.sidechannel_id"]?.intValue ?? -1
                let stat = try #require(
                    stats.first { Int64($0["sidechannel_id"] as? Int ?? -2) == id }, "no stats for \(id)")
                #expect(
                    span.attributes["gitaly.sidechannel.bytes_to_client"]?.intValue
                        == Int64(stat["sidechannel_read"] as? Int ?? -1))
                #expect(
                    span.attributes["gitaly.sidechannel.bytes_to_server"]?.intValue
                        == Int64(stat["sidechannel_written"] as? Int ?? -1))
                #expect(span.attributes["gitaly.sidechannel.end"] == .string("closed"))
                packTotal += span.attributes["gitaly.sidechannel.pack_bytes"]?.intValue ?? 0
            }
            // Band 1 of the HTTP upload-pack response is the pack itself, byte for byte what the clone stored.
            let pack = try packBytes(dir.file("http-clone"))
            #expect(pack > 1_000_000)
            #expect(packTotal == Int64(pack), "pack bytes in the sidechannels \(packTotal), pack file \(pack)")

            let pushSpans = Self.rpcSpans(tap, pushID)
            #expect(
                pushSpans.map(\.name).sorted() == [
                    "gitaly.SmartHTTPService/InfoRefsReceivePack", "gitaly.SmartHTTPService/PostReceivePack",
                ])
            for span in pushSpans { Self.expectCommon(span, client: "gitlab-workhorse", traceID: traceID) }
        }
    }

    @Test("a plain HTTP/2 client and a backchannel client on the same tap socket at the same time")
    func plainAndBackchannelTogether() async throws {
        try GoPeers.require()
        let dir = try TempDir()
        defer { dir.cleanup() }
        _ = try await makeTestRepository(storage: dir.file("storage"), scratch: dir.path)
        let upstream = try await GoPeers.startUpstream(in: dir, storage: dir.file("storage"))
        defer { upstream.process.stop() }
        try await TapHarness.with(
            listen: .unix(path: dir.file("tap.sock")), upstream: try TapAddress(parsing: upstream.unix)
        ) { tap in
            let (plain, url) = try await GoPeers.startWorkhorse(
                in: dir, name: "plain", target: "unix:" + dir.file("tap.sock"),
                arguments: ["--plain", "--client-name", "gitlab-web"])
            defer { plain.stop() }
            let plainID = "01JTAPPLAIN0000000000000001"
            let sshID = "01JTAPSSHTOGETHER0000000001"
            let ssh = GoPeers.sshCommand(
                target: "unix:" + dir.file("tap.sock"), arguments: ["--correlation-id", sshID])
            // Protocol v0: the ref listing comes whole from InfoRefsUploadPack (no sidechannel on a plain connection).
            async let listed = gitOK([
                "-c", "protocol.version=0", "-c", "http.extraHeader=X-Request-Id: \(plainID)",
                "ls-remote", url + "/group/proj.git",
            ])
            async let cloned = gitOK(
                ["clone", "-q", "ssh://git@gitaly/group/proj.git", dir.file("together")],
                environment: ["GIT_SSH_COMMAND": ssh, "GIT_SSH_VARIANT": "ssh"])
            let refs = try await listed
            _ = try await cloned
            #expect(refs.contains("refs/heads/main"))
            try await tap.waitForSpans("both spans") { _ in
                !Self.rpcSpans(tap, plainID).isEmpty && !Self.rpcSpans(tap, sshID).isEmpty
            }
            let plainSpan = try #require(Self.rpcSpans(tap, plainID).first)
            let sshSpan = try #require(Self.rpcSpans(tap, sshID).first)
            #expect(plainSpan.name == "gitaly.SmartHTTPService/InfoRefsUploadPack")
            #expect(plainSpan.attributes["gitaly.backchannel"] == nil)
            #expect(plainSpan.attributes["gitlab.client_name"] == .string("gitlab-web"))
            #expect(sshSpan.name == "gitaly.SSHService/SSHUploadPackWithSidechannel")
            #expect(sshSpan.attributes["gitaly.backchannel"] == .bool(true))
            #expect((sshSpan.attributes["gitaly.sidechannel.bytes_to_client"]?.intValue ?? 0) > 1_000_000)
        }
    }
}

/// The Gitaly-like upstream's Trace2 modes (GITALY-WIRE.md §5): Gitaly's own temp files, the environment's target
/// passed through (for a socket or wrapper), or none.
@Suite(.serialized)
struct GitalyPeerTrace2Tests {
    @Test("Trace2 of the upstream's git processes", arguments: ["tempfile", "inherit", "off"])
    func trace2Mode(mode: String) async throws {
        try GoPeers.require()
        let dir = try TempDir()
        defer { dir.cleanup() }
        _ = try await makeTestRepository(storage: dir.file("storage"), scratch: dir.path)
        let targetDir = dir.file("trace2-target")
        try FileManager.default.createDirectory(atPath: targetDir, withIntermediateDirectories: true)
        // A directory target: git writes one file per process there (used only when the mode passes it on).
        let upstream = try await GoPeers.startUpstream(
            in: dir, storage: dir.file("storage"), trace2: mode, environment: ["GIT_TRACE2_EVENT": targetDir])
        defer { upstream.process.stop() }
        let id = "01JTAPTRACE2\(mode.uppercased())"
        let ssh = GoPeers.sshCommand(target: upstream.unix, arguments: ["--correlation-id", id])
        try await gitOK(
            ["clone", "-q", "ssh://git@gitaly/group/proj.git", dir.file("clone")],
            environment: ["GIT_SSH_COMMAND": ssh, "GIT_SSH_VARIANT": "ssh"])
        upstream.process.stop()
        let log = upstream.process.stderr.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        let trace2Files = log.filter { $0["trace2_file"] != nil }
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir.file("tmp")).filter {
            $0.hasPrefix("gitaly-trace2")
        }
        let targetFiles = try FileManager.default.contentsOfDirectory(atPath: targetDir)
        #expect(leftovers.isEmpty, "Trace2 temp files must be removed after the command: \(leftovers)")
        switch mode {
        case "tempfile":
            #expect(trace2Files.count == 1)
            let file = try #require(trace2Files.first)
            let events = file["events"] as? Int ?? 0
            #expect(events > 10, "upload-pack and pack-objects events")
            #expect(file["events_under_correlation_id"] as? Int == events, "every sid starts with <correlation id>/")
            #expect(file["correlation_id"] as? String == id)
            #expect(targetFiles.isEmpty, "Gitaly drops the environment's GIT_TRACE2_EVENT")
        case "inherit":
            #expect(trace2Files.isEmpty)
            #expect(!targetFiles.isEmpty, "git wrote to the inherited target")
        default:
            #expect(trace2Files.isEmpty)
            #expect(targetFiles.isEmpty)
        }
    }
}

/// More real traffic shapes: TCP on both sides, Jaeger trace headers, and concurrent clones whose sidechannels
/// interleave on one yamux session.
@Suite(.serialized)
struct BackchannelConcurrencyTests {
    @Test(
        "four concurrent HTTP clones over one Workhorse backchannel connection: each span gets its own sidechannel's bytes"
    )
    func concurrentClonesShareOneSession() async throws {
        try GoPeers.require()
        let dir = try TempDir()
        defer { dir.cleanup() }
        _ = try await makeTestRepository(storage: dir.file("storage"), scratch: dir.path)
        let upstream = try await GoPeers.startUpstream(in: dir, storage: dir.file("storage"))
        defer { upstream.process.stop() }
        try await TapHarness.with(
            listen: .unix(path: dir.file("tap.sock")), upstream: try TapAddress(parsing: upstream.unix)
        ) { tap in
            let (workhorse, url) = try await GoPeers.startWorkhorse(
                in: dir, name: "workhorse", target: "unix:" + dir.file("tap.sock"),
                arguments: ["--stats", dir.file("stats")])
            defer { workhorse.stop() }
            let ids = (1...4).map { "01JTAPCONCURRENT00000000000\($0)" }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for id in ids {
                    group.addTask {
                        try await gitOK([
                            "-c", "http.extraHeader=X-Request-Id: \(id)", "clone", "-q", url + "/group/proj.git",
                            dir.file("clone-\(id)"),
                        ])
                    }
                }
                try await group.waitForAll()
            }
            let stats = GoPeers.jsonLines(dir.file("stats"))
            try await tap.waitForSpans("every clone's spans") { _ in
                ids.allSatisfy { id in
                    let uploads = BackchannelGitTests.rpcSpans(tap, id).filter { $0.name.hasSuffix("WithSidechannel") }
                    return uploads.count == stats.filter { $0["correlation_id"] as? String == id }.count
                        && !uploads.isEmpty
                }
            }
            let connections = Set(
                ids.flatMap { BackchannelGitTests.rpcSpans(tap, $0) }.compactMap {
                    $0.attributes["tap.connection.id"]?.intValue
                })
            #expect(connections.count == 1, "all clones ride the Workhorse's one connection")
            for id in ids {
                let uploads = BackchannelGitTests.rpcSpans(tap, id).filter { $0.name.hasSuffix("WithSidechannel") }
                var pack: Int64 = 0
                for span in uploads {
                    let sidechannel = span.attributes["gitaly.sidechannel_id"]?.intValue ?? -1
                    let stat = try #require(stats.first { Int64($0["sidechannel_id"] as? Int ?? -2) == sidechannel })
                    #expect(stat["correlation_id"] as? String == id)
                    #expect(
                        span.attributes["gitaly.sidechannel.bytes_to_client"]?.intValue
                            == Int64(stat["sidechannel_read"] as? Int ?? -1))
                    #expect(
                        span.attributes["gitaly.sidechannel.bytes_to_server"]?.intValue
                            == Int64(stat["sidechannel_written"] as? Int ?? -1))
                    pack += span.attributes["gitaly.sidechannel.pack_bytes"]?.intValue ?? 0
                }
                #expect(pack == Int64(try packBytes(dir.file("clone-\(id)"))), "\(id): pack bytes")
            }
        }
    }

    @Test(
        "a Shell client that drops mid-clone: its span ends in error with the bytes seen, and the tap serves the next clone"
    )
    func clientDropsMidClone() async throws {
        try GoPeers.require()
        let dir = try TempDir()
        defer { dir.cleanup() }
        _ = try await makeTestRepository(storage: dir.file("storage"), scratch: dir.path)
        let upstream = try await GoPeers.startUpstream(in: dir, storage: dir.file("storage"))
        defer { upstream.process.stop() }
        try await TapHarness.with(
            listen: .unix(path: dir.file("tap.sock")), upstream: try TapAddress(parsing: upstream.unix)
        ) { tap in
            let dropped = "01JTAPDROPPED00000000000001"
            let drop = GoPeers.sshCommand(
                target: "unix:" + dir.file("tap.sock"),
                arguments: ["--correlation-id", dropped, "--abort-after", "200000"])
            let failed = try await git(
                ["clone", "-q", "ssh://git@gitaly/group/proj.git", dir.file("dropped")],
                environment: ["GIT_SSH_COMMAND": drop, "GIT_SSH_VARIANT": "ssh"])
            #expect(failed.status != 0)
            #expect(failed.stderr.contains("aborting after"), "\(failed.stderr)")

            let next = "01JTAPAFTERDROP000000000001"
            let ssh = GoPeers.sshCommand(target: "unix:" + dir.file("tap.sock"), arguments: ["--correlation-id", next])
            try await gitOK(
                ["clone", "-q", "ssh://git@gitaly/group/proj.git", dir.file("next")],
                environment: ["GIT_SSH_COMMAND": ssh, "GIT_SSH_VARIANT": "ssh"])

            try await tap.waitForSpans("both clones' spans") { _ in
                !BackchannelGitTests.rpcSpans(tap, dropped).isEmpty && !BackchannelGitTests.rpcSpans(tap, next).isEmpty
            }
            let lost = try #require(BackchannelGitTests.rpcSpans(tap, dropped).first)
            #expect(lost.status.code == .error)
            #expect(lost.attributes["rpc.grpc.end"] == .string("connection_lost"))
            #expect(lost.attributes["gitaly.sidechannel.end"] == .string("connection_lost"))
            let seen = lost.attributes["gitaly.sidechannel.bytes_to_client"]?.intValue ?? 0
            let pack = Int64(try packBytes(dir.file("next")))
            #expect(seen >= 200_000 && seen < pack, "seen \(seen) of a \(pack)-byte pack")
            let ok = try #require(BackchannelGitTests.rpcSpans(tap, next).first)
            #expect(ok.status.code == .ok)
            #expect((ok.attributes["gitaly.sidechannel.stdout_bytes"]?.intValue ?? 0) >= pack)
        }
    }

    @Test("SSH clone through a TCP tap to Gitaly's TCP listener, with a Jaeger uber-trace-id")
    func tcpAndJaeger() async throws {
        try GoPeers.require()
        let dir = try TempDir()
        defer { dir.cleanup() }
        let bare = try await makeTestRepository(storage: dir.file("storage"), scratch: dir.path)
        let upstream = try await GoPeers.startUpstream(in: dir, storage: dir.file("storage"))
        defer { upstream.process.stop() }
        try await TapHarness.with(
            listen: .tcp(host: "127.0.0.1", port: 0), upstream: try TapAddress(parsing: upstream.tcp)
        ) { tap in
            let id = "01JTAPTCPJAEGER000000000001"
            let traceID = "00000000000000007a1b2c3d4e5f6071"
            let ssh = GoPeers.sshCommand(
                target: tap.address,
                arguments: [
                    "--correlation-id", id, "--trace-format", "uber-trace-id", "--trace-id", "7a1b2c3d4e5f6071",
                ])
            try await gitOK(
                ["clone", "-q", "ssh://git@gitaly/group/proj.git", dir.file("clone")],
                environment: ["GIT_SSH_COMMAND": ssh, "GIT_SSH_VARIANT": "ssh"])
            try await gitOK(["clone", "-q", "--no-local", bare, dir.file("direct")])
            let cloned = try await repositoryFingerprint(dir.file("clone"))
            let direct = try await repositoryFingerprint(dir.file("direct"))
            #expect(cloned.refs == direct.refs && cloned.objects == direct.objects)
            try await tap.waitForSpans("the clone's span") { _ in !BackchannelGitTests.rpcSpans(tap, id).isEmpty }
            let span = try #require(BackchannelGitTests.rpcSpans(tap, id).first)
            #expect(span.traceID.description == traceID)
            #expect(span.attributes["tap.trace.propagation"] == .string("uber-trace-id"))
            #expect(span.attributes["network.transport"] == .string("tcp"))
            #expect(
                (span.attributes["gitaly.sidechannel.stdout_bytes"]?.intValue ?? 0)
                    >= Int64(try packBytes(dir.file("clone"))))
        }
    }
}
