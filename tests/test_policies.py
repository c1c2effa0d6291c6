"""Room policies: every join and publish rule crossed with the sockets it must let in and
keep out, pattern precedence, deny-by-default (smartsocket.policies, room_patterns)."""

from __future__ import annotations

from typing import Any

import pytest

from smartsocket.auth import SubscriptionClaims, TokenClaims, TokenVerifier
from smartsocket.policies import Decision, Join, Publish, Refusal, RoomPolicies, RoomPolicy
from smartsocket.room_patterns import PatternTable, pattern_problem
from tokenkit import NOW, SECRET, FakeClock, claims, sign

VERIFIER = TokenVerifier(secret=SECRET, clock=FakeClock())


def user(name: str = "ann", **claim: Any) -> TokenClaims:
    return VERIFIER.verify(sign(claims(sub=name, **claim)))


def sub_token(room: str, name: str | None = "ann", **claim: Any) -> str:
    return sign(claims(sub=name, room=room, **claim))


def policies(**kwargs: Any) -> RoomPolicies:
    return RoomPolicies({
        "lobby": RoomPolicy(),
        "members": RoomPolicy(join="authenticated"),
        "chat:*": RoomPolicy(join="grant"),
        "user:*": RoomPolicy(join="user"),
        "private:*": RoomPolicy(join="subscription"),
        "team:*": RoomPolicy(join=["grant", "subscription"]),
        "admin": RoomPolicy(join="server"),
    }, verifier=VERIFIER, clock=FakeClock(), **kwargs)


ANON = None
ANN = user("ann", rooms=["chat:general", "team:red"])
BOB = user("bob")

# (room, socket, subscription token, allowed or the refusal)
JOINS: list[tuple[str, TokenClaims | None, str | None, Refusal | None]] = [
    ("lobby", ANON, None, None),
    ("lobby", BOB, None, None),
    ("members", ANON, None, Refusal.NOT_AUTHENTICATED),
    ("members", BOB, None, None),
    ("chat:general", ANN, None, None),
    ("chat:general", BOB, None, Refusal.NOT_GRANTED),
    ("chat:general", ANON, None, Refusal.NOT_AUTHENTICATED),
    ("chat:random", ANN, None, Refusal.NOT_GRANTED),
    ("user:ann", ANN, None, None),
    ("user:ann", BOB, None, Refusal.NOT_OWNER),
    ("user:ann", ANON, None, Refusal.NOT_AUTHENTICATED),
    ("user:annie", ANN, None, Refusal.NOT_OWNER),  # the whole suffix, not a prefix of it
    ("user:", ANN, None, Refusal.NOT_OWNER),
    ("private:x", ANN, sub_token("private:x"), None),
    ("private:x", ANN, None, Refusal.SUBSCRIPTION_REQUIRED),
    ("private:x", ANN, sub_token("private:y"), Refusal.SUBSCRIPTION_INVALID),
    ("private:x", BOB, sub_token("private:x"), Refusal.SUBSCRIPTION_INVALID),  # ann's token
    ("private:x", ANN, sub_token("private:x", exp=NOW - 60), Refusal.SUBSCRIPTION_INVALID),
    ("private:x", ANN, sign(claims(room="private:x"), "another-secret-another-secret-01"),
     Refusal.SUBSCRIPTION_INVALID),
    ("private:x", ANN, sign(claims()), Refusal.SUBSCRIPTION_INVALID),  # a connection token
    ("private:x", ANON, sub_token("private:x", None), None),
    ("private:x", ANON, sub_token("private:x"), Refusal.SUBSCRIPTION_INVALID),
    ("team:red", ANN, None, None),  # by grant
    ("team:blue", ANN, sub_token("team:blue"), None),  # by subscription
    ("team:blue", ANN, None, Refusal.NOT_GRANTED),
    ("team:blue", BOB, sub_token("team:red", "bob"), Refusal.SUBSCRIPTION_INVALID),
    ("admin", ANN, None, Refusal.SERVER_ONLY),
    ("admin", ANON, sub_token("admin", None), Refusal.SERVER_ONLY),
    ("unmatched", ANON, None, None),
]


@pytest.mark.parametrize(("room", "who", "token", "expected"), JOINS)
def test_join_rules(room: str, who: TokenClaims | None, token: str | None,
                    expected: Refusal | None) -> None:
    decision = policies().may_join(room, who, token)
    assert decision.allowed is (expected is None), decision
    assert decision.reason == expected
    if expected is not None:
        assert decision.code == "forbidden" and decision.message


@pytest.mark.parametrize(("room", "who", "token", "expected"), JOINS)
def test_the_server_may_always_join(room: str, who: TokenClaims | None, token: str | None,
                                    expected: Refusal | None) -> None:
    assert policies(deny_by_default=True).may_join(room, who, token, by_server=True).allowed


def test_join_decision_carries_the_pattern_and_expiry() -> None:
    rules = policies()
    granted = rules.may_join("chat:general", ANN)
    assert granted.pattern == "chat:*" and granted.expires == ANN.expires
    subscribed = rules.may_join("private:x", ANN, sub_token("private:x", exp=NOW + 20))
    assert subscribed.expires == NOW + 20  # its own expiry, not the connection's
    assert rules.may_join("admin", ANN).pattern == "admin"


def test_subscription_claims_verified_beforehand() -> None:
    rules = policies()
    verified = VERIFIER.verify_subscription(sub_token("private:x"), "private:x", "ann")
    assert rules.may_join("private:x", ANN, verified).allowed
    assert rules.may_join("private:y", ANN, verified).reason is Refusal.SUBSCRIPTION_INVALID
    assert rules.may_join("private:x", BOB, verified).reason is Refusal.SUBSCRIPTION_INVALID
    stale = SubscriptionClaims(user="ann", room="private:x", expires=NOW - 100)
    assert rules.may_join("private:x", ANN, stale).reason is Refusal.SUBSCRIPTION_INVALID


def test_subscription_strings_need_a_verifier() -> None:
    rules = RoomPolicies({"p:*": RoomPolicy(join="subscription")})
    decision = rules.may_join("p:1", ANN, sub_token("p:1"))
    assert decision.reason is Refusal.SUBSCRIPTION_INVALID


PUBLISHES: list[tuple[str, TokenClaims | None, bool, Refusal | None]] = [
    ("lobby", ANON, True, None),
    ("lobby", ANON, False, Refusal.NOT_MEMBER),
    ("news", ANN, True, None),
    ("news", ANN, False, Refusal.NOT_MEMBER),
    ("announce", ANN, True, Refusal.SERVER_ONLY),
    ("announce", ANON, False, Refusal.SERVER_ONLY),
    ("stage:1", user("ann", rooms={"stage:*": ["join", "publish"]}), True, None),
    ("stage:1", user("ann", rooms={"stage:*": ["join"]}), True, Refusal.NOT_GRANTED),
    ("stage:1", user("ann", rooms=["stage:*"]), True, Refusal.NOT_GRANTED),
    ("stage:1", ANON, True, Refusal.NOT_GRANTED),
    ("stage:1", user("ann", rooms={"stage:*": ["publish"]}), False, Refusal.NOT_MEMBER),
    ("elsewhere", ANON, True, None),
]


@pytest.mark.parametrize(("room", "who", "member", "expected"), PUBLISHES)
def test_publish_rules(room: str, who: TokenClaims | None, member: bool,
                       expected: Refusal | None) -> None:
    rules = RoomPolicies({
        "lobby": RoomPolicy(), "news": RoomPolicy(publish="members"),
        "announce": RoomPolicy(publish="server"), "stage:*": RoomPolicy(publish="grant"),
    })
    decision = rules.may_publish(room, who, member=member)
    assert decision.reason == expected
    assert rules.may_publish(room, who, member=member, by_server=True).allowed


def test_deny_by_default() -> None:
    rules = RoomPolicies({"lobby": RoomPolicy()}, deny_by_default=True)
    assert rules.may_join("lobby", ANON).allowed
    assert rules.may_join("elsewhere", ANN).reason is Refusal.NO_POLICY
    assert rules.may_publish("elsewhere", ANN, member=True).reason is Refusal.NO_POLICY
    assert rules.may_join("elsewhere", ANN).pattern is None
    with pytest.raises(ValueError, match="contradict"):
        RoomPolicies(default=RoomPolicy(), deny_by_default=True)


def test_default_policy_is_the_star_pattern() -> None:
    rules = RoomPolicies({"lobby": RoomPolicy()}, default=RoomPolicy(join="authenticated"))
    assert rules.may_join("anything", ANON).reason is Refusal.NOT_AUTHENTICATED
    assert rules.may_join("anything", ANN).pattern == "*"
    assert rules.may_join("lobby", ANON).allowed


def test_most_specific_pattern_wins() -> None:
    rules = RoomPolicies({
        "*": RoomPolicy(join="server"),
        "chat:*": RoomPolicy(join="authenticated"),
        "chat:vip:*": RoomPolicy(join="grant"),
        "chat:vip:lounge": RoomPolicy(),
    })
    assert rules.may_join("chat:vip:lounge", ANON).allowed  # exact beats every prefix
    assert rules.may_join("chat:vip:x", BOB).reason is Refusal.NOT_GRANTED  # longest prefix
    assert rules.may_join("chat:x", BOB).allowed
    assert rules.may_join("chat:", BOB).allowed  # the prefix itself matches
    assert rules.may_join("chat", BOB).reason is Refusal.SERVER_ONLY  # "*"
    assert rules.match("chat:vip:") == ("chat:vip:*", rules.patterns()["chat:vip:*"])
    # The order patterns are given in does not matter.
    reordered = RoomPolicies(list(rules.patterns().items())[::-1])
    for room in ("chat:vip:lounge", "chat:vip:x", "chat:x", "other"):
        assert reordered.match(room) == rules.match(room)


def test_policy_settings_and_lookup() -> None:
    rules = RoomPolicies({"game:*": RoomPolicy(presence=True, history_size=50,
                                               history_ttl=60, rate_limit_messages=10,
                                               rate_limit_burst=20)})
    policy = rules.policy("game:1")
    assert policy is not None and policy.presence and policy.history_size == 50
    assert rules.policy("other") is None


def test_cache_is_bounded_and_cleared_on_change() -> None:
    rules = RoomPolicies({"a:*": RoomPolicy()}, cache_size=10)
    for i in range(100):
        rules.match(f"a:{i}")
    assert len(rules._cache) <= 10
    assert rules.match("b:1") is None
    rules.set("b:*", RoomPolicy(join="server"))
    assert rules.may_join("b:1", ANN).reason is Refusal.SERVER_ONLY


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"join": "everyone"}, "everyone"),
    ({"join": []}, "no rule"),
    ({"join": ["anyone", "grant"]}, "cannot be combined"),
    ({"join": ["server", "subscription"]}, "cannot be combined"),
    ({"publish": "all"}, "all"),
    ({"history_size": -1}, "history_size"),
    ({"history_ttl": -1}, "history_ttl"),
    ({"rate_limit_messages": -1}, "rate_limit_messages"),
])
def test_invalid_policies(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RoomPolicy(**kwargs)


def test_join_rules_normalised() -> None:
    assert RoomPolicy(join="grant").join == frozenset({Join.GRANT})
    assert RoomPolicy(publish="server").publish is Publish.SERVER


@pytest.mark.parametrize("pattern", ["user", "*"])
def test_user_rule_needs_a_prefix_pattern(pattern: str) -> None:
    with pytest.raises(ValueError, match="prefix pattern"):
        RoomPolicies({pattern: RoomPolicy(join="user")})


@pytest.mark.parametrize("pattern", ["", "a*b", "**", "*a", "chat:\u200b*", "a\n", 7])
def test_bad_patterns(pattern: Any) -> None:
    assert pattern_problem(pattern) is not None
    with pytest.raises(ValueError):
        RoomPolicies({pattern: RoomPolicy()})


def test_repeated_pattern() -> None:
    table: PatternTable[int] = PatternTable([("a:*", 1)])
    with pytest.raises(ValueError, match="twice"):
        table.add("a:*", 2)


def test_decision_is_plain_data() -> None:
    assert Decision(True) == Decision(True)
    assert Decision.code == "forbidden"
