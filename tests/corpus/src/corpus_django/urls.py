from django.contrib.auth.models import User
from django.http import HttpResponse, JsonResponse
from django.urls import path


def root(request):
    return HttpResponse("django ok\n", content_type="text/plain")


def users(request):
    return JsonResponse({"users": sorted(u.username for u in User.objects.all())})


urlpatterns = [path("", root), path("users", users)]
