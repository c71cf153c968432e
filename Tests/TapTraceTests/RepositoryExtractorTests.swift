import Testing

@testable import TapTrace

@Suite("RepositoryExtractor")
struct RepositoryExtractorTests {
    typealias P = ProtobufFixture

    static let expected = GitalyRepository(
        storageName: "default",
        relativePath: "@hashed/ab/cd/abcd.git",
        glRepository: "project-1",
        glProjectPath: "group/proj"
    )

    @Test("a request whose field 1 is a Repository yields it")
    func repositoryInFieldOne() {
        let request = P.bytesField(1, P.repository()) + P.stringField(2, "refs/heads/main")
        #expect(RepositoryExtractor.extract(fromRequest: request) == Self.expected)
    }

    @Test("field 1 is found after other fields, and fields of every wire type are skipped")
    func repositoryAfterOtherFields() {
        let request =
            P.varintField(3, 300) + P.fixed64Field(4, 0xDEAD_BEEF) + P.stringField(5, "revision")
            + P.fixed32Field(6, 7) + P.bytesField(1, P.repository()) + P.varintField(9, 1)
        #expect(RepositoryExtractor.extract(fromRequest: request) == Self.expected)
    }

    @Test("all Repository fields decode, unknown ones inside it are skipped")
    func allFields() throws {
        let repository =
            P.stringField(2, "default") + P.stringField(3, "repo.git") + P.stringField(4, "objects/quarantine")
            + P.stringField(5, "objects") + P.stringField(5, "../other/objects") + P.stringField(6, "project-1")
            + P.varintField(7, 1) + P.stringField(8, "group/proj") + P.fixed32Field(99, 1)
        let found = try #require(RepositoryExtractor.extract(fromRequest: P.bytesField(1, repository)))
        #expect(found.gitObjectDirectory == "objects/quarantine")
        #expect(found.gitAlternateObjectDirectories == ["objects", "../other/objects"])
        #expect(found.glProjectPath == "group/proj")
    }

    @Test("attributes list only non-empty identifying fields")
    func attributes() throws {
        #expect(
            Self.expected.attributes == [
                "gitaly.repository.storage": .string("default"),
                "gitaly.repository.relative_path": .string("@hashed/ab/cd/abcd.git"),
                "gitaly.repository.gl_repository": .string("project-1"),
                "gitaly.repository.gl_project_path": .string("group/proj"),
            ])
        let sparse = try #require(
            RepositoryExtractor.extract(
                fromRequest: P.bytesField(1, P.repository(glRepository: nil, glProjectPath: ""))))
        #expect(sparse.attributes.keys.sorted() == ["gitaly.repository.relative_path", "gitaly.repository.storage"])
    }

    @Test("a Repository with only a storage or only a relative path still counts")
    func partialRepository() {
        #expect(RepositoryExtractor.extract(fromRequest: P.bytesField(1, P.stringField(2, "default"))) != nil)
        #expect(RepositoryExtractor.extract(fromRequest: P.bytesField(1, P.stringField(3, "a.git"))) != nil)
    }

    @Test("repeated field 1 merges as protobuf does: last string wins")
    func repeatedFieldMerges() throws {
        let request = P.bytesField(1, P.repository()) + P.bytesField(1, P.stringField(3, "other.git"))
        let found = try #require(RepositoryExtractor.extract(fromRequest: request))
        #expect(found.storageName == "default")
        #expect(found.relativePath == "other.git")
    }

    @Test("a nested field path reaches a Repository inside a header message")
    func nestedFieldPath() {
        let header = P.bytesField(1, P.repository()) + P.stringField(2, "user")
        let request = P.bytesField(1, header)
        #expect(RepositoryExtractor.extract(fromRequest: request, fieldPath: [1, 1]) == Self.expected)
        #expect(RepositoryExtractor.extract(fromRequest: request, fieldPath: []) == nil)
        #expect(RepositoryExtractor.extract(fromRequest: request, fieldPath: [0]) == nil)
    }

    @Test("a header message in field 1 (repository 1, user 2) is not mistaken for a Repository at path [1]")
    func headerMessageIsNotARepository() {
        let user = P.stringField(1, "user-1") + P.stringField(2, "Jane") + P.stringField(3, "jane@example.com")
        let header = P.bytesField(1, P.repository()) + P.bytesField(2, user) + P.stringField(3, "main")
        let request = P.bytesField(1, header)
        #expect(RepositoryExtractor.extract(fromRequest: request) == nil)
        #expect(RepositoryExtractor.extract(fromRequest: request, fieldPath: [1, 1]) == Self.expected)
    }

    @Test("works on a non-contiguous collection and on a slice")
    func otherCollections() {
        let request = P.varintField(2, 1) + P.bytesField(1, P.repository())
        #expect(RepositoryExtractor.extract(fromRequest: request.reversed().reversed()) == Self.expected)
        let framed = [0, 0, 0, 0, 0] + request
        #expect(RepositoryExtractor.extract(fromRequest: framed[5...]) == Self.expected)
    }

    @Test("a malformed tail after the Repository does not lose it (a capped prefix is enough)")
    func malformedTailAfterRepository() {
        let request = P.bytesField(1, P.repository()) + P.tag(2, wireType: 2) + P.varint(1 << 20) + [1, 2, 3]
        #expect(RepositoryExtractor.extract(fromRequest: request) == Self.expected)
    }

    // MARK: nil cases

    /// Requests without a usable field-1 Repository; built one by one to keep type-checking fast.
    static let nilCases: [(String, [UInt8])] = {
        var cases: [(String, [UInt8])] = []
        func add(_ name: String, _ bytes: [UInt8]) { cases.append((name, bytes)) }
        add("empty message", [])
        add("field 1 absent", P.stringField(2, "default") + P.varintField(3, 1))
        add("field 1 is a varint", P.varintField(1, 42))
        add("field 1 is fixed64", P.fixed64Field(1, 42))
        add("field 1 is fixed32", P.fixed32Field(1, 42))
        add("field 1 is a plain string", P.stringField(1, "refs/heads/main"))
        add("field 1 is an empty message", P.bytesField(1, []))
        add("sub-message has neither storage nor path", P.bytesField(1, P.stringField(6, "project-1")))
        add("sub-message has empty storage and path", P.bytesField(1, P.repository(storage: "", relativePath: "")))
        add("storage_name has the wrong wire type", P.bytesField(1, P.varintField(2, 5) + P.stringField(3, "a")))
        add("relative_path is not UTF-8", P.bytesField(1, P.stringField(2, "d") + P.bytesField(3, [0x61, 0xFF])))
        add("gl_project_path is cut UTF-8", P.bytesField(1, P.stringField(2, "d") + P.bytesField(8, [0xE2, 0x82])))
        add("alternate dir is not UTF-8", P.bytesField(1, P.stringField(2, "d") + P.bytesField(5, [0xC0, 0x80])))
        add("sub-message truncated inside", P.bytesField(1, P.stringField(2, "default") + [0x1A, 0x10, 0x61]))
        add("sub-message contains a group", P.bytesField(1, P.stringField(2, "d") + P.tag(7, wireType: 3)))
        add("sub-message contains an end group", P.bytesField(1, P.stringField(2, "d") + P.tag(7, wireType: 4)))
        add("sub-message wire type 6", P.bytesField(1, P.stringField(2, "d") + P.tag(7, wireType: 6)))
        add("sub-message wire type 7", P.bytesField(1, P.stringField(2, "d") + P.tag(7, wireType: 7)))
        add("sub-message field number 0", P.bytesField(1, P.stringField(2, "d") + P.tag(0, wireType: 0) + [0]))
        add("field 1 length beyond the end", P.tag(1, wireType: 2) + P.varint(100) + P.repository())
        add("field 1 length near 2^64", P.tag(1, wireType: 2) + P.varint(UInt64.max) + P.repository())
        add("truncated varint before field 1", [0x18, 0x80, 0x80])
        add(
            "11-byte varint before field 1",
            [0x18] + [UInt8](repeating: 0x80, count: 10) + [0x01] + P.bytesField(1, P.repository()))
        add(
            "10th varint byte too big",
            [0x18] + [UInt8](repeating: 0xFF, count: 9) + [0x02] + P.bytesField(1, P.repository()))
        add("group before field 1", P.tag(5, wireType: 3) + P.bytesField(1, P.repository()))
        add("tag beyond 32 bits", P.varint(1 << 35) + P.bytesField(1, P.repository()))
        add("storage name holds a control character", P.bytesField(1, P.repository(storage: "def\nault")))
        add("relative path holds DEL", P.bytesField(1, P.repository(relativePath: "a\u{7F}.git")))
        add("field 1 once valid, once varint", P.bytesField(1, P.repository()) + P.varintField(1, 1))
        return cases
    }()

    @Test("requests without a usable field-1 Repository give nil", arguments: nilCases)
    func givesNil(_ testCase: (String, [UInt8])) {
        #expect(RepositoryExtractor.extract(fromRequest: testCase.1) == nil, "\(testCase.0)")
    }

    @Test("a 10-byte varint with a final byte of 1 is valid and skipped")
    func maximalVarintIsValid() {
        let request = [0x18] + [UInt8](repeating: 0xFF, count: 9) + [0x01] + P.bytesField(1, P.repository())
        #expect(RepositoryExtractor.extract(fromRequest: request) == Self.expected)
    }

    @Test("every truncation of a valid request either finds the Repository or gives nil, never crashes")
    func everyTruncation() {
        let repositoryField = P.bytesField(1, P.repository())
        let request = P.varintField(3, 1 << 40) + repositoryField + P.stringField(2, "refs/heads/main")
        let repositoryEnd = P.varintField(3, 1 << 40).count + repositoryField.count
        for length in 0...request.count {
            let found = RepositoryExtractor.extract(fromRequest: request[..<length])
            #expect((found == Self.expected) == (length >= repositoryEnd), "prefix length \(length)")
        }
    }

    @Test("random byte strings never crash the walk")
    func randomBytesNeverCrash() {
        var generator = SplitMix64(seed: 0x6174_6170)
        var found = 0
        for iteration in 0..<4000 {
            let count = Int.random(in: 0...64, using: &generator)
            var bytes = (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
            // Half the inputs start like a field-1 message so the walk goes deep, not just fails on byte one.
            if iteration.isMultiple(of: 2) {
                bytes = [0x0A, UInt8(min(count, 127))] + bytes
            }
            if RepositoryExtractor.extract(fromRequest: bytes) != nil { found += 1 }
        }
        #expect(found < 4000)
    }

    @Test("mutated valid requests never crash the walk")
    func mutatedRequestsNeverCrash() {
        var generator = SplitMix64(seed: 42)
        let valid = P.varintField(4, 7) + P.bytesField(1, P.repository()) + P.stringField(2, "main")
        for _ in 0..<3000 {
            var bytes = valid
            for _ in 0..<Int.random(in: 1...4, using: &generator) {
                let index = Int.random(in: 0..<bytes.count, using: &generator)
                bytes[index] = UInt8.random(in: 0...255, using: &generator)
            }
            if Bool.random(using: &generator) {
                bytes.removeLast(Int.random(in: 0..<bytes.count, using: &generator))
            }
            if let found = RepositoryExtractor.extract(fromRequest: bytes) {
                #expect(!found.storageName.isEmpty || !found.relativePath.isEmpty)
            }
        }
    }
}
