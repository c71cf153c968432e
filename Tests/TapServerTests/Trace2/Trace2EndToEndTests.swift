import Foundation
import TapServer
import TapTrace
import Testing

/// Real `git clone`s through a Workhorse-like client, the tap, and a Gitaly-like upstream that runs real git with
/// Gitaly's conventions (Tests/Peers/go): the git processes of each RPC must hang under that RPC's span.
@Suite("Trace2 end to end", .serialized)
struct Trace2EndToEndTests {
    enum Source: String, CaseIterable, Sendable {
        /// The git wrapper as Gitaly's bin_path, sending to --trace2-socket (joined by def_param CORRELATION_ID).
        case socket
        /// Gitaly's gitaly-trace2* temp files in its TMPDIR, created and deleted per command (joined by sid prefix).
        case tempfile
        /// A git directory target, one file per process (joined by def_param CORRELATION_ID).
        case directory
        /// The same without GIT_TRACE2_ENV_VARS: nothing names the correlation id, only --git-dir and time join.
        case directoryGitDir
        /// As `directoryGitDir` with the storage root configured (`--trace2-storage`): --git-dir must be the exact path.
        case directoryStorageRoot

        var expectedKey: String {
            switch self {
            case .tempfile: "sid_prefix"
            case .socket, .directory: "def_param"
            case .directoryGitDir, .directoryStorageRoot: "git_dir"
            }
        }
    }

    /// Every span that descends from `root` through parent links.
    static func descendants(of root: Span, in spans: [Span]) -> [Span] {
        var children: [SpanID: [Span]] = [:]
        for span in spans { if let parent = span.parentSpanID { children[parent, default: []].append(span) } }
        var out: [Span] = []
        var stack = children[root.spanID] ?? []
        while let span = stack.popLast() {
            out.append(span)
            stack += children[span.spanID] ?? []
        }
        return out
    }

    @Test(
        "a real git clone through the tap: RPC spans with upload-pack and pack-objects under them",
        arguments: Source.allCases)
    func cloneThroughTheTap(source: Source) async throws {
        try GoPeer.require()
        let dir = try TempDir()
        defer { dir.cleanup() }
        let storage = try await makeStorage(in: dir, repositories: ["a", "b"])
        let gitalyTmp = dir.file("gitaly-tmp")
        let traceDir = dir.file("trace2")
        for path in [gitalyTmp, traceDir] {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
        }
        let gitalySocket = dir.file("gitaly.sock")
        let tapSocket = dir.file("tap.sock")

        var options = Trace2Options()
        var upstreamArguments = ["upstream", "--listen", "unix:" + gitalySocket, "--storage", "default=" + storage]
        var upstreamEnvironment = ["TMPDIR": gitalyTmp]
        switch source {
        case .socket:
            let traceSocket = dir.file("t2.sock")
            options.sockets = [Trace2SocketTarget(kind: .stream, path: traceSocket)]
            // Installed like an operator would: a copy of the wrapper with the socket path set in it.
            let wrapper = try installTrace2Wrapper(in: dir, socket: traceSocket)
            upstreamArguments += ["--trace2", "off", "--git", wrapper]
        case .tempfile:
            options.directories = [gitalyTmp]
            upstreamArguments += ["--trace2", "tempfile"]
        case .directory, .directoryGitDir, .directoryStorageRoot:
            options.directories = [traceDir]
            if source == .directoryStorageRoot { options.collector.correlator.storageRoots = ["default": storage] }
            upstreamArguments += ["--trace2", "inherit"]
            upstreamEnvironment["GIT_TRACE2_EVENT"] = traceDir
            if source == .directory { upstreamEnvironment["GIT_TRACE2_ENV_VARS"] = "CORRELATION_ID" }
        }
        let upstream = try PeerProcess(
            GoPeer.executable, upstreamArguments, dir: dir, name: "upstream", environment: upstreamEnvironment)
        defer { upstream.stop() }
        _ = try await upstream.waitReady()

        let correlation = ["a": "corr-\(source.rawValue)-a", "b": "corr-\(source.rawValue)-b"]
        let spans = try await Trace2Harness.with(
            trace2: options, listen: .unix(path: tapSocket), upstream: .unix(path: gitalySocket)
        ) {
            h in
            let workhorse = try PeerProcess(
                GoPeer.executable, ["workhorse", "--target", "unix:" + tapSocket], dir: dir, name: "workhorse")
            defer { workhorse.stop() }
            let ready = try await workhorse.waitReady()
            let json =
                try JSONSerialization.jsonObject(with: Data(ready.dropFirst("READY ".count).utf8)) as? [String: Any]
            let url = try #require(json?["url"] as? String)
            let clientEnvironment = ["GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_SYSTEM": "/dev/null"]
            // Two clones of different repositories at the same time.
            async let cloneA = runCommand(
                "/usr/bin/git",
                [
                    "-c", "http.extraHeader=X-Request-Id: \(correlation["a"]!)", "clone", "-q", url + "/group/a.git",
                    dir.file("clone-a"),
                ],
                environment: clientEnvironment)
            async let cloneB = runCommand(
                "/usr/bin/git",
                [
                    "-c", "http.extraHeader=X-Request-Id: \(correlation["b"]!)", "clone", "-q", url + "/group/b.git",
                    dir.file("clone-b"),
                ],
                environment: clientEnvironment)
            let (a, b) = try await (cloneA, cloneB)
            #expect(a.status == 0, "clone a: \(a.stderr) upstream: \(upstream.stderr.suffix(2000))")
            #expect(b.status == 0, "clone b: \(b.stderr)")
            try await h.wait("pack-objects under both fetch RPCs") {
                let spans = h.spans
                let done = correlation.values.allSatisfy { id in
                    spans.contains { rpc in
                        rpc.name == "gitaly.SmartHTTPService/PostUploadPackWithSidechannel"
                            && rpc.string("gitlab.correlation_id") == id
                            && Self.descendants(of: rpc, in: spans).contains { $0.name == "git pack-objects" }
                    }
                }
                return done ? true : nil
            }
            return h.sink.collected
        }

        for (repo, id) in correlation {
            let rpcs = spans.filter {
                $0.string("gitlab.correlation_id") == id && $0.attributes["rpc.system"] == .string("grpc")
            }
            #expect(rpcs.contains { $0.name == "gitaly.SmartHTTPService/InfoRefsUploadPack" })
            for rpc in rpcs {
                let tree = Self.descendants(of: rpc, in: spans)
                // Each RPC ran exactly one upload-pack, directly under it, joined by the expected key.
                let uploadPacks = tree.filter { $0.name == "git upload-pack" }
                #expect(uploadPacks.count == 1, "\(rpc.name): \(tree.map(\.name))")
                #expect(uploadPacks.allSatisfy { $0.parentSpanID == rpc.spanID })
                #expect(uploadPacks.allSatisfy { $0.string("trace2.correlation.key") == source.expectedKey })
                // Nothing of the other clone's repository in this tree.
                for span in tree {
                    if let path = span.string("git.repository.path") {
                        #expect(path.hasSuffix("/group/\(repo).git"), "\(span.name) with \(path) under \(id)")
                    }
                    #expect(span.traceID == rpc.traceID)
                    #expect(
                        span.startTimeUnixNano >= rpc.startTimeUnixNano && span.endTimeUnixNano <= rpc.endTimeUnixNano,
                        "\(span.name) [\(span.startTimeUnixNano), \(span.endTimeUnixNano)] outside \(rpc.name) [\(rpc.startTimeUnixNano), \(rpc.endTimeUnixNano)]"
                    )
                }
            }
            let fetch = try #require(
                rpcs.first { rpc in Self.descendants(of: rpc, in: spans).contains { $0.name == "git pack-objects" } })
            #expect(fetch.name == "gitaly.SmartHTTPService/PostUploadPackWithSidechannel")
            let tree = Self.descendants(of: fetch, in: spans)
            let uploadPack = try #require(tree.first { $0.name == "git upload-pack" })
            let packObjects = try #require(tree.first { $0.name == "git pack-objects" })
            let child = try #require(tree.first { $0.spanID == packObjects.parentSpanID })
            #expect(child.name == "child git pack-objects")
            #expect(child.parentSpanID == uploadPack.spanID)
            #expect(packObjects.string("git.command.hierarchy") == "upload-pack/pack-objects")
            let write = try #require(tree.first { $0.name == "pack-objects:write-pack-file" })
            #expect(write.parentSpanID == packObjects.spanID)
            #expect(
                write.startTimeUnixNano >= packObjects.startTimeUnixNano
                    && write.endTimeUnixNano <= packObjects.endTimeUnixNano)
            #expect(
                packObjects.string("gitlab.correlation_id") == nil || packObjects.string("gitlab.correlation_id") == id)
        }
        // Every git process span found its RPC.
        let unmatched = spans.filter { $0.string("trace2.correlation.key") == "none" }
        #expect(unmatched.isEmpty, "unmatched: \(unmatched.map { $0.name + " " + ($0.string("trace2.sid") ?? "") })")
    }
}
