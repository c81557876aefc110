// The egress allowlist's patterns: what is one (and what a user is told to write instead),
// and which names each lets through.
#include <boost/test/unit_test.hpp>

#include <string>
#include <utility>
#include <vector>

#include "machine/net.hpp"

using namespace machine::net;

BOOST_AUTO_TEST_SUITE(net_policy)

BOOST_AUTO_TEST_CASE(good_patterns) {
    for (const char* ok : {"github.com", "GitHub.COM", "api.anthropic.com", "*.githubusercontent.com",
                           "*.example.co.uk", "registry.npmjs.org", "a-b.c0.example", "xn--bcher-kva.example",
                           "deb.debian.org"}) {
        BOOST_TEST(host_pattern_problem(ok) == "", ok);
    }
}

BOOST_AUTO_TEST_CASE(problems_say_what_to_write) {
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"http://github.com", R"("http://github.com" is not a host name: write github.com)"},
        {"https://GitHub.com/org/repo", R"("https://GitHub.com/org/repo" is not a host name: write github.com)"},
        {"github.com/org", R"("github.com/org" is not a host name: write github.com)"},
        {"github.com:443", R"("github.com:443" is not a host name: write github.com)"},
        {"user@github.com", R"("user@github.com" is not a host name: write github.com)"},
        {"*.com", R"("*.com" is too wide: name a domain under a public suffix like *.example.com)"},
        {"*", R"("*" is too wide: name a domain under a public suffix like *.example.com)"},
        {"1.2.3.4", R"("1.2.3.4" is an address: egress takes host names)"},
        {"::1", R"("::1" is an address: egress takes host names)"},
        {"[2001:db8::1]", R"("[2001:db8::1]" is an address: egress takes host names)"},
        {"http://1.2.3.4/", R"("http://1.2.3.4/" is an address: egress takes host names)"},
        {"github.com.", R"("github.com." ends with a dot: write github.com)"},
        {"localhost", R"("localhost" is not a full host name: write one with its domain, such as github.com)"},
        {"a.*.com", R"("a.*.com": a wildcard is only "*." at the start, as in *.example.com)"},
        {"*github.com", R"("*github.com": a wildcard is only "*." at the start, as in *.example.com)"},
        {"*.*.com", R"("*.*.com": a wildcard is only "*." at the start, as in *.example.com)"},
        {"", "an empty entry is not a host name"},
        {"git hub.com", R"("git hub.com" is not a host name: use letters, digits, hyphens and dots)"},
        {"git_hub.com", R"("git_hub.com" is not a host name: use letters, digits, hyphens and dots)"},
        {"a..com", R"("a..com" has an empty label (two dots, or a dot at the start))"},
        {".github.com", R"(".github.com" has an empty label (two dots, or a dot at the start))"},
        {"-a.com", R"("-a.com" has a label that starts or ends with a hyphen)"},
        {"123.456", R"("123.456" is not a host name: its last label is a number)"},
        {"evil\x1b[2J.com", R"("evil\x1b[2J.com" is not a host name: use letters, digits, hyphens and dots)"},
    };
    for (const auto& [entry, want] : cases) BOOST_TEST(host_pattern_problem(entry) == want, entry);
    BOOST_TEST(host_pattern_problem(std::string(64, 'a') + ".com").find("longer than 63") != std::string::npos);
    const std::string long_name = std::string(63, 'a') + "." + std::string(63, 'b') + "." + std::string(63, 'c') + "." +
                                  std::string(63, 'd') + ".com";
    const auto p = host_pattern_problem(long_name);
    BOOST_TEST(p.find("253 bytes") != std::string::npos, p);
    BOOST_TEST(p.size() < 200u);  // the entry is quoted short
}

BOOST_AUTO_TEST_CASE(exact_names_match_themselves) {
    BOOST_TEST(host_matches("github.com", "github.com"));
    BOOST_TEST(host_matches("GitHub.com", "GITHUB.COM."));  // case and a trailing dot do not count
    BOOST_TEST(!host_matches("github.com", "api.github.com"));
    BOOST_TEST(!host_matches("github.com", "github.com.evil.com"));
    BOOST_TEST(!host_matches("github.com", "evilgithub.com"));
    BOOST_TEST(!host_matches("github.com", "github.co"));
    BOOST_TEST(!host_matches("github.com", ""));
    BOOST_TEST(!host_matches("github.com", "github.com.."));
}

BOOST_AUTO_TEST_CASE(wildcards_match_names_under_the_domain) {
    BOOST_TEST(host_matches("*.example.com", "a.example.com"));
    BOOST_TEST(host_matches("*.example.com", "a.b.example.com"));
    BOOST_TEST(host_matches("*.Example.com", "A.EXAMPLE.COM."));
    BOOST_TEST(!host_matches("*.example.com", "example.com"));
    BOOST_TEST(!host_matches("*.example.com", "badexample.com"));
    BOOST_TEST(!host_matches("*.example.com", ".example.com"));
    BOOST_TEST(!host_matches("*.example.com", "example.com.evil.net"));
    BOOST_TEST(!host_matches("*.example.com", "a.example.co"));
}

BOOST_AUTO_TEST_CASE(bad_patterns_and_hosts_match_nothing) {
    BOOST_TEST(!host_matches("*.com", "github.com"));
    BOOST_TEST(!host_matches("*", "github.com"));
    BOOST_TEST(!host_matches("1.2.3.4", "1.2.3.4"));
    BOOST_TEST(!host_matches("http://github.com", "github.com"));
    BOOST_TEST(!host_matches("", ""));
    BOOST_TEST(!host_matches("github.com", "github.com\x1b"));
    BOOST_TEST(!host_matches("*.example.com", "a b.example.com"));
    BOOST_TEST(!host_matches("*.example.com", "::1"));
}

BOOST_AUTO_TEST_SUITE_END()
