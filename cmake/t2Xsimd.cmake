# Provides t2::xsimd, through which t2::t2 gets xsimd. Used by t2's own build and by the
# installed t2Config.cmake alike, so it is the consumer's machine that decides whether SIMD
# is available: with xsimd the target carries its include directory, without it the target
# sets T2_ENABLE_SIMD=0 and t2 builds with its scalar and thread executors only.
#
# xsimd's own CMake package is deliberately not used: Debian 12's (xsimd 8.1) exports a
# target that links a library `xtl` which does not exist (`ld: cannot find -lxtl`).
if(TARGET t2::xsimd)
  return()
endif()

find_package(PkgConfig QUIET)
if(PKG_CONFIG_FOUND)
  pkg_check_modules(T2_PC_XSIMD QUIET xsimd)
endif()
find_path(T2_XSIMD_INCLUDE_DIR xsimd/xsimd.hpp
  HINTS ${T2_PC_XSIMD_INCLUDE_DIRS} ${T2_PC_XSIMD_INCLUDEDIR}
  DOC "Directory holding xsimd/xsimd.hpp (optional; without it t2 builds without SIMD)")

add_library(t2::xsimd INTERFACE IMPORTED)
if(T2_XSIMD_INCLUDE_DIR)
  set_target_properties(t2::xsimd PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${T2_XSIMD_INCLUDE_DIR}")
else()
  set_target_properties(t2::xsimd PROPERTIES
    INTERFACE_COMPILE_DEFINITIONS "T2_ENABLE_SIMD=0")
  message(STATUS "t2: xsimd not found; the SIMD executor is disabled (T2_ENABLE_SIMD=0)")
endif()
