"""The original documentation's Architecture example, on the C bridge.

A coroutine needs a plain function that, in turn, needs a coroutine:
spawn_greenlet runs the plain function in a greenlet where the synchronized
coroutine can be called like any function.
"""
import asyncio

from aiopyramid.helpers import coroutine, spawn_greenlet, synchronize


@synchronize
@coroutine
def some_async_task():
    print("I am a synchronized coroutine.")
    yield from asyncio.sleep(0.2)
    print("Synchronized task done.")


def normal_function():
    print("I am normal function that needs to call some_async_task")
    some_async_task()
    print("I (normal_function) called it, and it is done now like I expect.")


@coroutine
def parent():
    print("I am a traditional coroutine that needs to call the naive normal_function")
    yield from spawn_greenlet(normal_function)
    print("All is done.")


if __name__ == "__main__":
    asyncio.run(parent())
