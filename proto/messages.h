/* messages.h: placement plans to and from their protobuf message (msg_ prefix). */
#ifndef DH_MESSAGES_H
#define DH_MESSAGES_H
#include <stddef.h>

#include "sched/placement.h"

/* The plan as a packed darkhorse.PlacementPlan: malloc'd bytes, *len set. */
unsigned char *msg_plan_pack(const place_plan *p, size_t *len);
/* A packed plan back, checked for consistent sizes; NULL with a message if malformed. */
place_plan *msg_plan_unpack(const unsigned char *buf, size_t len);
#endif
