import Testing
import NIOCore
import TapWire

@Test func dumpFixtures() throws {
    for f in try WireFixture.all() {
        let o = decodeConnection(f.timeline, close: 99)
        print("=== \(f.name) kind \(o.decoder.kind) stopped \(o.decoder.stoppedReason ?? "-") bytes \(o.decoder.bytesToServer)/\(o.decoder.bytesToClient)")
        for r in o.records { print(RecordSummary(r)) ; dump(RecordSummary(r)) }
    }
}
