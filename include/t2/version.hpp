#pragma once
// Version of t2. CMake and Meson parse these three lines; keep their form.
#define T2_VERSION_MAJOR 0
#define T2_VERSION_MINOR 1
#define T2_VERSION_PATCH 0

#define T2_VERSION_STRINGIFY_(x) #x
#define T2_VERSION_STRINGIFY(x) T2_VERSION_STRINGIFY_(x)
#define T2_VERSION_STRING                                                                  \
    T2_VERSION_STRINGIFY(T2_VERSION_MAJOR)                                                 \
    "." T2_VERSION_STRINGIFY(T2_VERSION_MINOR) "." T2_VERSION_STRINGIFY(T2_VERSION_PATCH)
