import Foundation
import Testing

@testable import TapTrace
@testable import TapWire

@Suite("JSON bytes, name tables and method names (span path)")
struct JSONBytesTests {
    /// Decodes one JSON value the way a reader of the span log would.
    func parse(_ bytes: borrowing JSONBytes) throws -> Any {
        let data = bytes.withUnsafeBytes { Data($0) }
        return try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])
    }

    @Test("random strings of plain, escaped and non-ASCII text read back exactly, in one buffer that grows many times")
    func randomStrings() throws {
        var generator = SystemRandomNumberGenerator()
        let alphabet: [String] = ["a", "Z", "0", " ", "/", "\"", "\\", "\n", "\r", "\t", "\u{0}", "\u{1F}", "\u{7F}", "é", "日", "🎉"]
        var texts: [String] = []
        var bytes = JSONBytes(capacity: 16)
        bytes.byte(UInt8(ascii: "["))
        for index in 0..<500 {
            // Long plain runs before, between and after escapes: the copy-then-escape path at every offset.
            let text = (0..<Int.random(in: 0...60, using: &generator)).map { _ in
                Bool.random(using: &generator) ? "plain" : alphabet.randomElement(using: &generator)!
            }.joined()
            texts.append(text)
            if index > 0 { bytes.byte(UInt8(ascii: ",")) }
            bytes.string(text)
        }
        bytes.byte(UInt8(ascii: "]"))
        #expect(bytes.withUnsafeBytes { $0.allSatisfy { $0 >= 0x20 } }, "no raw control character reaches a line")
        #expect(try parse(bytes) as? [String] == texts)
    }

    @Test("integers, hex and doubles: extremes, zero and every digit count")
    func numbers() throws {
        var values: [Int64] = [0, 1, -1, 9, 10, 99, 100, .max, .min, .max - 1, .min + 1]
        var power: Int64 = 1
        for _ in 0..<18 {
            power *= 10
            values += [power - 1, power, -power]
        }
        for value in values {
            var bytes = JSONBytes()
            bytes.signed(value)
            #expect(bytes.withUnsafeBytes { String(decoding: $0, as: UTF8.self) } == String(value))
        }
        var unsigned = JSONBytes()
        unsigned.unsigned(.max)
        #expect(unsigned.withUnsafeBytes { String(decoding: $0, as: UTF8.self) } == String(UInt64.max))

        var hex = JSONBytes()
        hex.hex(0x0123_4567_89ab_cdef)
        hex.hex(0)
        #expect(hex.withUnsafeBytes { String(decoding: $0, as: UTF8.self) } == "0123456789abcdef" + String(repeating: "0", count: 16))

        var doubles = JSONBytes()
        doubles.array([0.1, 1e-7, 1e20, -2.5, .nan, .infinity, -.infinity]) { bytes, number in bytes.double(number) }
        let parsed = try #require(try parse(doubles) as? [Any])
        #expect(parsed.prefix(4).compactMap { ($0 as? NSNumber)?.doubleValue } == [0.1, 1e-7, 1e20, -2.5])
        #expect(parsed.suffix(3).compactMap { $0 as? String } == ["NaN", "Infinity", "-Infinity"])
    }

    @Test("a name table finds every name, and only those, whatever the lengths")
    func nameTable() {
        let table = NameTable<Int>(["b3": 1, "x-b3-flags": 2, "x-b3-spanid": 3, "traceparent": 4, "tracestate": 5, "b3": 6])
        #expect(table["b3"] == 1, "a repeated name keeps its first value")
        #expect(table["x-b3-flags"] == 2)
        #expect(table["x-b3-spanid"] == 3)
        #expect(table["traceparent"] == 4, "same length as x-b3-spanid")
        #expect(table["tracestate"] == 5, "same length as x-b3-flags")
        for absent in ["", "b", "b4", "x-b3-flagz", "traceparents", "TRACEPARENT", String(repeating: "x", count: 100)] {
            #expect(table[absent] == nil, "\(absent)")
        }
        #expect(NameTable<Int>([:])["anything"] == nil)
    }

    @Test("method names kept between spans match those made afresh, across more paths than the cache holds")
    func methodNames() {
        let connection = ConnectionInfo(
            id: 1, transport: "unix", peer: "", listenAddress: "unix:/t", upstreamAddress: "unix:/g", startTimeUnixNano: 1)
        let paths = (0..<12).map { "/gitaly.Service\($0 % 5)/Method\($0)" } + ["/gitaly.SSHService/SSHUploadPackWithSidechannel", "no-slash", "/a/b/c", "",
            "/gitaly.Long/" + String(repeating: "m", count: 300)]
        var names = MethodNames()
        var generator = SystemRandomNumberGenerator()
        for round in 0..<3 {
            for path in round == 1 ? paths.reversed() : paths {
                var record = GRPCCallRecord(streamID: 1, path: path, startTime: 1)
                record.endTime = 2
                let kept = RPCSpanBuilder().span(for: record, connection: connection, using: &generator, names: &names)
                let fresh = RPCSpanBuilder().span(for: record, connection: connection)
                #expect(kept.name == fresh.name, "\(path)")
                #expect(kept.attributes["rpc.service"] == fresh.attributes["rpc.service"], "\(path)")
                #expect(kept.attributes["rpc.method"] == fresh.attributes["rpc.method"], "\(path)")
            }
        }
    }
}
