#define BOOST_TEST_MODULE machine unit tests
#include <boost/test/unit_test.hpp>
