#pragma once
// The training loop's progress line (train/loop.hpp's step_report), on stderr by default:
//
//   step 40/200  loss 0.5321  |g| 1.2e-03  val 0.700 (best 0.720)  reward 0.41  0.84 s/step  ETA 2m14s
//
// On a terminal the line is redrawn in place after every step; otherwise (a log file, CI) a
// plain line is printed when a validation ran, a checkpoint was due, or the run ended, so
// logs stay short and readable.
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <string_view>

#include <unistd.h>

#include "t2/config.hpp"
#include "t2/train/loop.hpp"

T2_NAMESPACE_BEGIN
namespace train {

class progress_line {
public:
    explicit progress_line(std::FILE* out = stderr) : progress_line(out, ::isatty(::fileno(out)) == 1) {}
    progress_line(std::FILE* out, bool redraw) : out_(out), redraw_(redraw) {}
    progress_line(const progress_line&) = delete;
    progress_line& operator=(const progress_line&) = delete;
    ~progress_line() { finish(); }

    // extra: the caller's own fields, e.g. "reward 0.41  312 tok/s".
    void update(const step_report& r, std::string_view extra = {}) {
        seconds_ += r.seconds;
        ++counted_;
        const std::string line = format(r, extra);
        if (redraw_) {
            std::fprintf(out_, "\r%s\x1b[K", line.c_str());
            open_ = true;
        } else if (!std::isnan(r.score) || r.checkpoint_due || r.step == r.steps) {
            std::fprintf(out_, "%s\n", line.c_str());
        }
        std::fflush(out_);
    }

    // Ends a redrawn line (the destructor does it too).
    void finish() {
        if (open_)
            std::fputc('\n', out_);
        open_ = false;
    }

private:
    std::string format(const step_report& r, std::string_view extra) {
        char buf[256];
        std::string s;
        std::snprintf(buf, sizeof buf, "step %zu/%zu  loss %.4f  |g| %.1e", r.step, r.steps, double(r.loss),
                      double(r.gradient_norm));
        s += buf;
        if (!std::isnan(r.score))
            last_score_ = r.score;
        if (!std::isnan(last_score_)) {
            std::snprintf(buf, sizeof buf, "  val %.3f (best %.3f)", last_score_, r.best_score);
            s += buf;
        }
        if (!extra.empty()) {
            s += "  ";
            s += extra;
        }
        const double per_step = seconds_ / double(counted_);
        const double left = per_step * double(r.steps - r.step);
        std::snprintf(buf, sizeof buf, "  %.2f s/step  ETA %dm%02ds", per_step, int(left) / 60, int(left) % 60);
        s += buf;
        return s;
    }

    std::FILE* out_;
    bool redraw_;
    bool open_ = false;
    double seconds_ = 0;
    std::size_t counted_ = 0;
    double last_score_ = std::numeric_limits<double>::quiet_NaN();
};

} // namespace train
T2_NAMESPACE_END
