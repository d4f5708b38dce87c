// Stop strings over streamed text: held back while they may still match,
// cut right before a match, and not applied to text before min_tokens.
#include "stop_strings.h"

#include <gtest/gtest.h>

namespace tandem::router {
namespace {

TEST(StopStrings, HoldsBackCutsAndPassesTextBeforeMinTokens) {
  StopStringFilter f({"END", ""});
  bool hit = false;
  EXPECT_EQ(f.push("abcE", hit), "ab");  // "cE" could start "END"
  EXPECT_FALSE(hit);
  EXPECT_EQ(f.push("x", hit), "c");  // the last two bytes could still start it
  EXPECT_EQ(f.pass("END "), "ExEN");  // before min_tokens: not matched; the tail is held as usual
  EXPECT_EQ(f.push("yEN", hit), "D y");
  EXPECT_FALSE(hit);
  EXPECT_EQ(f.push("Dz", hit), "");
  EXPECT_TRUE(hit);
  // A stop string starting in passed text and ending in pushed text stops;
  // one wholly inside passed text does not, even while still held back.
  StopStringFilter across({"END"});
  EXPECT_EQ(across.pass("ENDxEN"), "ENDx");
  EXPECT_EQ(across.push("Dq", hit), "");
  EXPECT_TRUE(hit);
  StopStringFilter inside({"END", "LONGSTOP"});
  EXPECT_EQ(inside.pass("aEND"), "");  // all held: "LONGSTOP" holds 7 bytes
  EXPECT_EQ(inside.push("q", hit), "");
  EXPECT_FALSE(hit);
  EXPECT_EQ(inside.flush(), "aENDq");
  // include_stop_str_in_output: the answer ends with the stop string; the
  // earliest match wins, on a tie the first given.
  StopStringFilter keep({"ND", "EN", "END"}, /*keep_stop=*/true);
  EXPECT_EQ(keep.push("xxEND tail", hit), "xxEN");
  EXPECT_TRUE(hit);
  StopStringFilter none({});
  EXPECT_EQ(none.push("anything", hit), "anything");
  EXPECT_FALSE(hit);
}

}  // namespace
}  // namespace tandem::router
