import Testing

@testable import TapTrace

@Suite("GitLabMetadata")
struct GitLabMetadataTests {
    static let token = "Bearer v2.5b2a8e0f3c6d4e1f9a7b8c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f.1700000000"

    @Test("every known key maps to its attribute")
    func mapsKnownKeys() {
        let attributes = GitLabMetadata.attributes(from: [
            (name: "x-gitlab-correlation-id", value: "01HCORRELATION"),
            (name: "x-gitlab-client-name", value: "gitlab-workhorse"),
            (name: "user_id", value: "42"),
            (name: "username", value: "alice"),
            (name: "remote_ip", value: "192.0.2.7"),
            (name: "key_id", value: "7"),
            (name: "key_type", value: "key"),
            (name: "gitaly-session-id", value: "3f2504e0-4f89-11d3-9a0c-0305e82c3301"),
            (name: "call_site", value: "Gitlab::GitalyClient::CommitService#find_commit"),
            (name: "deadline_type", value: "regular"),
            (name: "gitaly-sidechannel-id", value: "12345"),
        ])
        #expect(
            attributes == [
                "gitlab.correlation_id": .string("01HCORRELATION"),
                "gitlab.client_name": .string("gitlab-workhorse"),
                "gitlab.user_id": .string("42"),
                "gitlab.username": .string("alice"),
                "gitlab.remote_ip": .string("192.0.2.7"),
                "gitlab.key_id": .string("7"),
                "gitlab.key_type": .string("key"),
                "gitaly.session_id": .string("3f2504e0-4f89-11d3-9a0c-0305e82c3301"),
                "gitaly.call_site": .string("Gitlab::GitalyClient::CommitService#find_commit"),
                "gitaly.deadline_type": .string("regular"),
                "gitaly.sidechannel_id": .int(12345),
            ])
    }

    @Test("client name: x-gitlab-client-name wins over client_name, which is the fallback")
    func clientNamePrecedence() {
        let both = GitLabMetadata.attributes(from: [
            (name: "client_name", value: "gitlab-web"),
            (name: "x-gitlab-client-name", value: "gitlab-shell-git-upload-pack"),
        ])
        #expect(both["gitlab.client_name"] == .string("gitlab-shell-git-upload-pack"))
        let railsOnly = GitLabMetadata.attributes(from: [(name: "client_name", value: "gitlab-sidekiq")])
        #expect(railsOnly["gitlab.client_name"] == .string("gitlab-sidekiq"))
    }

    @Test("feature flags are split into sorted enabled and disabled name lists")
    func featureFlags() {
        let attributes = GitLabMetadata.attributes(from: [
            (name: "gitaly-feature-zeta", value: "true"),
            (name: "gitaly-feature-alpha-beta", value: "TRUE"),
            (name: "gitaly-feature-off", value: "false"),
            (name: "gitaly-feature-weird", value: "yes"),
            (name: "gitaly-feature-", value: "true"),
            (name: "gitaly-feature-zeta", value: "false"),
        ])
        #expect(attributes["gitaly.feature_flags.enabled"] == .stringArray(["alpha-beta", "zeta"]))
        #expect(attributes["gitaly.feature_flags.disabled"] == .stringArray(["off"]))
        #expect(attributes.count == 2)
    }

    @Test("empty values, unknown keys and a non-numeric sidechannel id produce nothing")
    func skipsEmptyAndUnknown() {
        let attributes = GitLabMetadata.attributes(from: [
            (name: "username", value: ""),
            (name: "content-type", value: "application/grpc"),
            (name: "gitaly-servers", value: "eyJkZWZhdWx0Ijp7fX0="),
            (name: "gitaly-sidechannel-id", value: "twelve"),
        ])
        #expect(attributes.isEmpty)
    }

    @Test("the first value of a repeated key wins")
    func firstWins() {
        let attributes = GitLabMetadata.attributes(from: [
            (name: "username", value: "alice"),
            (name: "username", value: "mallory"),
        ])
        #expect(attributes["gitlab.username"] == .string("alice"))
    }

    @Test("authorization is never emitted, under any attribute")
    func neverEmitsAuthorization() {
        #expect(GitLabMetadata.redactedMetadataNames.contains("authorization"))
        let attributes = GitLabMetadata.attributes(from: [
            (name: "authorization", value: Self.token),
            (name: "x-gitlab-correlation-id", value: "abc"),
            (name: "username", value: "alice"),
        ])
        #expect(attributes.count == 2)
        #expect(attributes.keys.allSatisfy { !$0.contains("authorization") })
        let token = Self.token
        let tokenSecret = String(token.split(separator: ".")[1])
        for value in attributes.values {
            let texts: [String]
            switch value {
            case .string(let text): texts = [text]
            case .stringArray(let array): texts = array
            default: texts = []
            }
            for text in texts {
                #expect(!text.contains(tokenSecret))
                #expect(!text.contains("Bearer"))
            }
        }
    }
}
