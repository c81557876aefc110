#define BOOST_TEST_MODULE machine cli tests
#include <boost/test/unit_test.hpp>
