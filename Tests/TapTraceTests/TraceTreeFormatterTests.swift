import Testing

@testable import TapTrace

@Suite struct TraceTreeFormatterTests {
    static let trace = TraceID(high: 0x4bf9_2f35_77b3_4da6, low: 0xa3ce_929d_0e0e_4736)

    static func rpc(
        _ id: UInt64, parent: UInt64? = 0x00f0_67aa_0ba9_02b7, start: UInt64, name: String,
        attributes: SpanAttributes = [:]
    ) -> Span {
        Span(
            traceID: trace, spanID: SpanID(id), parentSpanID: parent.map(SpanID.init), name: name, kind: .server,
            startTimeUnixNano: start, endTimeUnixNano: start + 12_345_678, attributes: attributes)
    }

    @Test("one tree per trace: roots in start order, sidechannel figures under the RPC, child spans nested")
    func treeWithSidechannelAndChild() {
        let upload = Self.rpc(
            1, start: 2_000, name: "gitaly.SSHService/SSHUploadPackWithSidechannel",
            attributes: [
                "gitlab.correlation_id": .string("corr-1"),
                "gitlab.client_name": .string("gitlab-shell-git-upload-pack"),
                "gitaly.repository.relative_path": .string("group/proj.git"),
                "rpc.grpc.request.bytes": .int(40), "rpc.grpc.response.bytes": .int(0), "rpc.grpc.status_code": .int(0),
                "gitaly.sidechannel_id": .int(1), "gitaly.sidechannel.bytes_to_server": .int(300),
                "gitaly.sidechannel.bytes_to_client": .int(2 * 1024 * 1024),
                "gitaly.sidechannel.duration_ns": .int(9_000_000),
                "gitaly.sidechannel.stdout_bytes": .int(2_000_000), "gitaly.sidechannel.stderr_bytes": .int(12),
            ])
        let git = Self.rpc(3, parent: 1, start: 2_500, name: "git upload-pack")
        let info = Self.rpc(
            2, start: 1_000, name: "gitaly.SmartHTTPService/InfoRefsUploadPack",
            attributes: [
                "rpc.grpc.status_code": .int(5)
            ])
        var failed = info
        failed.status = .init(code: .error, message: "repository not found")
        let other = Span(
            traceID: TraceID(high: 0, low: 9), spanID: SpanID(7), name: "later", kind: .server,
            startTimeUnixNano: 5_000, endTimeUnixNano: 5_800)
        let text = TraceTreeFormatter().format([upload, other, git, failed])
        #expect(
            text == """
                trace 4bf92f3577b34da6a3ce929d0e0e4736  correlation_id corr-1
                ├─ gitaly.SmartHTTPService/InfoRefsUploadPack  12.3 ms  NOT_FOUND ERROR (repository not found)
                └─ gitaly.SSHService/SSHUploadPackWithSidechannel  12.3 ms  OK  client gitlab-shell-git-upload-pack, repo group/proj.git, gRPC 40 B in, 0 B out
                   │  sidechannel #1: 300 B to Gitaly, 2.00 MiB to the client in 9.0 ms (stdout 1.91 MiB, stderr 12 B)
                   └─ git upload-pack  12.3 ms  OK

                trace 00000000000000000000000000000009
                └─ later  0 µs  OK
                """)
    }

    @Test("a describe hook replaces the figures of the spans it knows")
    func describeHook() {
        let span = Self.rpc(1, start: 0, name: "git pack-objects")
        let lines = TraceTreeFormatter(describe: { $0.name.hasPrefix("git ") ? "pid 42" : nil }).formatTrace([span])
        #expect(lines.last == "└─ git pack-objects  12.3 ms  OK  pid 42")
    }

    @Test("a parent cycle in hostile input ends")
    func cycle() {
        let a = Self.rpc(1, parent: 2, start: 0, name: "a")
        let b = Self.rpc(2, parent: 1, start: 1, name: "b")
        #expect(TraceTreeFormatter().formatTrace([a, b]).count == 1)
    }

    @Test(
        "durations and byte counts read well",
        arguments: [
            (UInt64(850_000), "850 µs"), (12_345_678, "12.3 ms"), (1_204_000_000, "1.20 s"),
        ])
    func durations(ns: UInt64, text: String) {
        #expect(TraceTreeFormatter.duration(ns) == text)
    }

    @Test("byte counts", arguments: [(Int64(512), "512 B"), (1536, "1.5 KiB"), (3_407_872, "3.25 MiB")])
    func bytes(count: Int64, text: String) {
        #expect(TraceTreeFormatter.bytes(count) == text)
    }
}
