/* container_of: the structure that embeds a member, from a pointer to the member (libuv
 * handles embedded in our structures). */
#pragma once

#include <stddef.h>

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))
